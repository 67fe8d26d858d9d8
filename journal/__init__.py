"""The event journal: event schema, frames, segments, writer and recovery. Imports nothing from gw."""

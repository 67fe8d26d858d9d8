"""Coverage-guided fuzzing (atheris) of every entry point that reads bytes from outside; see fuzz/common.py."""

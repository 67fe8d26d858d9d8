# gw tasks. `just setup` once, then any recipe; recipes use the project's .venv when it exists.
set shell := ["bash", "-euo", "pipefail", "-c"]
export PATH := justfile_directory() / ".venv/bin" + ":" + env_var("PATH")

# list the recipes
default:
    @just --list

# create .venv and install gw with its dev tools
setup:
    test -x .venv/bin/python || python3 -m venv .venv
    .venv/bin/pip install -q -e '.[dev]'

# the whole test suite (hypothesis: bounded profile when CI is set, "dev" otherwise)
test *args:
    python -m pytest -q {{args}}

# the suite with the thorough hypothesis profile (minutes)
test-thorough *args:
    HYPOTHESIS_PROFILE=thorough python -m pytest -q {{args}}

# NAT and journal benchmarks; each ends with one JSON line
bench:
    python -m bench.nat
    python -m bench.journal

# static checks
lint:
    ruff check .

# a NAT + journal + audit demonstration, in memory and a temporary directory
demo *args:
    gw demo {{args}}

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

# the tools bench.tunnel and bench.e2e compare gw with (Debian packages; root); --no-install-recommends:
# otherwise apt pulls in a whole kernel image
bench-deps:
    command -v iperf3 >/dev/null && command -v wireguard-go >/dev/null && command -v wg >/dev/null && \
        command -v nft >/dev/null && command -v slirp4netns >/dev/null && command -v pasta >/dev/null || \
        apt-get install -y -q --no-install-recommends iperf3 wireguard-go wireguard-tools nftables slirp4netns passt

# gw against wireguard-go and kernel forwarding in the lab's namespaces (root; minutes); ends with one JSON line
bench-tunnel *args: bench-deps
    python -m bench.tunnel {{args}}

# client to internet through gw's NAT, wireguard-go and the kernel; new flows/s by audit mode (root; minutes)
bench-e2e *args: bench-deps
    python -m bench.e2e {{args}}

# the gateway SIGKILLed 20 times under load in the lab, restarted, every promise checked (root; a minute)
bench-crash *args:
    python -m bench.crash {{args}}

# floods against the gateway in the lab, and another client's throughput during each (root, iperf3; a minute)
bench-flood *args:
    python -m bench.flood {{args}}

# the whole VPN in throwaway network namespaces (root): build, check, report, remove
lab *args:
    gw lab {{args}}

# static checks
lint:
    ruff check .

# a NAT + journal + audit demonstration, in memory and a temporary directory
demo *args:
    gw demo {{args}}

# coverage-guided fuzzing of every entry point that reads bytes from outside (atheris): 10**6 inputs per
# target, one after another, new coverage merged into fuzz/corpus/; e.g. `just fuzz --runs 100000 dns`
fuzz *args:
    python -m fuzz.run --merge {{args}}

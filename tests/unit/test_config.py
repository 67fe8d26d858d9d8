"""gw.config: defaults with their RFC reasons, and every operator mistake as a ConfigError naming file, key,
value and fix (STYLE section 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gw import config
from gw.config import GatewayConfig, NatConfig, VpnConfig
from gw.errors import ConfigError

SOURCE = "lab-gw.toml"


def test_empty_file_gives_the_documented_defaults() -> None:
    c = config.parse("", SOURCE)
    assert c == GatewayConfig()
    n = c.nat
    assert (n.udp_timeout_s, n.tcp_established_timeout_s, n.tcp_transitory_timeout_s, n.icmp_timeout_s) == (
        300,
        7440,
        240,
        60,
    )  # RFC 4787 REQ-5, RFC 5382 REQ-5, RFC 5508 REQ-1 (DESIGN.md "NAT behaviour")
    assert n.filtering == "address-and-port-dependent"
    assert n.port_reuse_delay_s == 120 and n.tcp_mss == 1360 and n.log_destination is False
    assert n.port_bounds() == (1024, 65535) and n.external_ints() == [0xC6336401]
    assert n.max_mappings_per_client >= 1
    assert c.vpn.subnet == "10.66.77.0/24" and c.vpn.gateway_address == "10.66.77.1"
    assert set(c.vpn.deny) == {
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "255.255.255.255/32",
    }


def test_a_full_valid_file_is_read_into_the_structs() -> None:
    text = """
[nat]
external_addresses = ["198.51.100.1", "198.51.100.2"]
port_range = "20000-29999"
filtering = "endpoint-independent"
udp_timeout_s = 600
tcp_mss = 0
log_destination = true

[vpn]
subnet = "10.8.0.0/16"
gateway_address = "10.8.0.1"
deny = ["169.254.0.0/16"]
"""
    c = config.parse(text, SOURCE)
    assert c.nat.external_ints() == [0xC6336401, 0xC6336402]
    assert c.nat.port_bounds() == (20000, 29999)
    assert (c.nat.filtering, c.nat.udp_timeout_s, c.nat.tcp_mss, c.nat.log_destination) == (
        "endpoint-independent",
        600,
        0,
        True,
    )
    assert c.vpn == VpnConfig(subnet="10.8.0.0/16", gateway_address="10.8.0.1", deny=["169.254.0.0/16"])


def test_config_structs_are_frozen() -> None:
    with pytest.raises(AttributeError):
        NatConfig().udp_timeout_s = 1  # type: ignore[misc]


# (what the file says, then fragments the message must hold: the key, the value as written, the fix)
BAD = [
    (
        '[nat]\nport_range = "40000-3000"',
        "[nat] port_range",
        '"40000-3000"',
        'start is above end (write "3000-40000")',
    ),
    ('[nat]\nport_range = "1024"', "[nat] port_range", '"1024"', '"FIRST-LAST"'),
    ('[nat]\nport_range = "80-90"', "[nat] port_range", '"80-90"', "1024-65535"),
    ('[nat]\nport_range = "2000-70000"', "[nat] port_range", '"2000-70000"', "1024-65535"),
    ('[nat]\nport_range = "²-3"', "[nat] port_range", '"²-3"', '"FIRST-LAST"'),
    ('[nat]\nport_range = " 1024-2000"', "[nat] port_range", '" 1024-2000"', '"FIRST-LAST"'),
    ("[nat]\nport_range = 5", "[nat] port_range", "= 5", 'for example port_range = "1024-65535"'),
    ("[nat]\nexternal_addresses = []", "[nat] external_addresses", "[]", "at least one public IPv4 address"),
    (
        '[nat]\nexternal_addresses = ["198.51.100.300"]',
        "[nat] external_addresses",
        '"198.51.100.300"',
        'e.g. "198.51.100.1"',
    ),
    (
        '[nat]\nexternal_addresses = "198.51.100.1"',
        "[nat] external_addresses",
        '"198.51.100.1"',
        'for example external_addresses = ["198.51.100.1"]',
    ),
    (
        '[nat]\nexternal_addresses = ["198.51.100.1", "198.51.100.1"]',
        "[nat] external_addresses",
        '["198.51.100.1", "198.51.100.1"]',
        "listed twice (drop one)",
    ),
    (
        '[nat]\nexternal_addresses = ["10.66.77.9"]',
        "[nat] external_addresses",
        '"10.66.77.9"',
        "cannot lie inside the VPN subnet 10.66.77.0/24",
    ),
    (
        '[nat]\nfiltering = "full-cone"',
        "[nat] filtering",
        '"full-cone"',
        'use one of "endpoint-independent", "address-dependent", "address-and-port-dependent"',
    ),
    ("[nat]\nudp_timeout_s = 60", "[nat] udp_timeout_s", "= 60", "at least 120 s"),
    ('[nat]\nudp_timeout_s = "300"', "[nat] udp_timeout_s", '"300"', "for example udp_timeout_s = 300"),
    ("[nat]\nudp_timeout_s = 1.5", "[nat] udp_timeout_s", "1.5", "for example udp_timeout_s = 300"),
    ("[nat]\ntcp_established_timeout_s = 7000", "[nat] tcp_established_timeout_s", "7000", "at least 7440 s"),
    ("[nat]\ntcp_transitory_timeout_s = 60", "[nat] tcp_transitory_timeout_s", "60", "at least 240 s"),
    ("[nat]\nicmp_timeout_s = 10", "[nat] icmp_timeout_s", "10", "at least 60 s"),
    ("[nat]\nport_reuse_delay_s = -1", "[nat] port_reuse_delay_s", "-1", "0 or more"),
    ("[nat]\nmax_mappings_per_client = 0", "[nat] max_mappings_per_client", "= 0", "at least 1"),
    ("[nat]\ntcp_mss = 100", "[nat] tcp_mss", "100", "536-65495"),
    ("[nat]\ntcp_mss = true", "[nat] tcp_mss", "true", "for example tcp_mss = 1360"),
    (
        '[nat]\nlog_destination = "yes"',
        "[nat] log_destination",
        '"yes"',
        "for example log_destination = false",
    ),
    ("[nat]\nfragment_timeout_s = 0", "[nat] fragment_timeout_s", "= 0", "at least 1 s"),
    ("[nat]\nfragment_max_bytes = 1000", "[nat] fragment_max_bytes", "1000", "at least 65535"),
    ("[nat]\nfragment_max_datagrams = 0", "[nat] fragment_max_datagrams", "= 0", "at least 1"),
    ('[vpn]\nsubnet = "10.66.77.1/24"', "[vpn] subnet", '"10.66.77.1/24"', "did you mean 10.66.77.0/24?"),
    ('[vpn]\nsubnet = "10.66.77.0/33"', "[vpn] subnet", '"10.66.77.0/33"', 'e.g. "10.66.77.0/24"'),
    (
        '[vpn]\nsubnet = "10.66.77.0/31"\ngateway_address = "10.66.77.0"',
        "[vpn] subnet",
        '"10.66.77.0/31"',
        "use /30 or larger",
    ),
    (
        '[vpn]\ngateway_address = "10.66.78.1"',
        "[vpn] gateway_address",
        '"10.66.78.1"',
        "must lie inside [vpn] subnet 10.66.77.0/24",
    ),
    ('[vpn]\ngateway_address = "gw"', "[vpn] gateway_address", '"gw"', 'e.g. "10.66.77.1"'),
    ('[vpn]\ndeny = ["10.0.0.1/8"]', "[vpn] deny", '"10.0.0.1/8"', "did you mean 10.0.0.0/8?"),
    ("[vpn]\ndeny = [5]", "[vpn] deny[0]", "= 5", "for example deny = ["),
    ("nat = 5", "nat", "= 5", "write it as a [nat] table"),
]


@pytest.mark.parametrize(("text", "key", "value", "fix"), BAD, ids=[b[0].replace("\n", " ") for b in BAD])
def test_bad_value_is_a_config_error_naming_file_key_value_and_fix(
    text: str, key: str, value: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text, SOURCE)
    msg = str(info.value)
    assert msg.startswith(f"{SOURCE}: "), msg
    assert key in msg and value in msg and fix in msg, msg
    assert "\n" not in msg  # cli.main prints one line
    assert info.value.exit_code == 2


def test_the_style_guide_example_message_verbatim() -> None:
    with pytest.raises(
        ConfigError,
        match=r'^gateway\.toml: \[nat\] port_range = "40000-3000": start is above end '
        r'\(write "3000-40000"\)$',
    ):
        config.parse('[nat]\nport_range = "40000-3000"')


@pytest.mark.parametrize(
    ("text", "named", "listed"),
    [
        ("[nat]\nudp_timeout = 300", "[nat] udp_timeout: unknown key", "udp_timeout_s"),
        ("[vpn]\nsubnets = []", "[vpn] subnets: unknown key", "subnet"),
        ("[nta]\nx = 1", "[nta]: unknown section", "[nat], [vpn]"),
        ('port_range = "1024-2000"', "[port_range]: unknown section", "[nat], [vpn]"),
    ],
)
def test_unknown_keys_and_sections_are_rejected_with_the_known_ones_listed(
    text: str, named: str, listed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text, SOURCE)
    msg = str(info.value)
    assert msg.startswith(f"{SOURCE}: ") and named in msg and listed in msg, msg


@pytest.mark.parametrize(
    "text", ["[nat", "[nat]\nport_range = ", "[nat]\nudp_timeout_s = 1\nudp_timeout_s = 2", "\x00"]
)
def test_bad_toml_is_a_config_error_naming_the_file(text: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{SOURCE}: not valid TOML: "):
        config.parse(text, SOURCE)


def test_load_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "gateway.toml"
    good.write_text('[nat]\nport_range = "30000-30999"\n', encoding="utf-8")
    assert config.load(str(good)).nat.port_bounds() == (30000, 30999)
    bad = tmp_path / "bad.toml"
    bad.write_text('[nat]\nport_range = "3-1"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{bad}: \[nat\] port_range"):
        config.load(str(bad))
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=rf"^{missing}: cannot read the configuration"):
        config.load(str(missing))


def test_every_nat_key_has_a_default_so_an_empty_section_is_valid() -> None:
    assert config.parse("[nat]\n[vpn]\n", SOURCE) == GatewayConfig()


FP_A, FP_B = "a" * 64, "b" * 64


def test_clients_and_the_tunnel_section_parse_in_the_spirit_of_wg_quick() -> None:
    c = config.parse(
        f"""
[tunnel]
listen = "198.51.100.1:8443"
certificate = "/etc/gw/gateway.crt"
key = "/etc/gw/gateway.key"

[[clients]]
name = "alice"
fingerprint = "{FP_A}"
address = "10.66.77.10"

[[clients]]
name = "bob"
fingerprint = "{FP_B}"
revoked = true
""",
        SOURCE,
    )
    assert [(e.name, e.address, e.revoked) for e in c.clients] == [("alice", "10.66.77.10", False), ("bob", "", True)]
    assert c.tunnel.listen == "198.51.100.1:8443" and c.tunnel.mtu == 1400


@pytest.mark.parametrize(
    "text, expect",
    [
        ('[[clients]]\nname = "alice"\n', r"\[\[clients\]\] #1 \(alice\): .*fingerprint.*gw keys new"),
        (f'[[clients]]\nname = "alice"\nfingerprint = "{FP_A}"\ncolour = "red"\n', r"#1 \(alice\) colour: unknown key"),
        ('[[clients]]\nname = "alice"\nfingerprint = "abc"\n', r'fingerprint = "abc": 64 hex digits'),
        (f'[[clients]]\nname = "a"\nfingerprint = "{FP_A}"\n[[clients]]\nname = "a"\nfingerprint = "{FP_B}"\n',
         r"#2 \(a\) name = \"a\": another client has this name"),
        (f'[[clients]]\nname = "a"\nfingerprint = "{FP_A}"\n[[clients]]\nname = "b"\nfingerprint = "{FP_A}"\n',
         r"another client has this fingerprint"),
        (f'[[clients]]\nname = "a"\nfingerprint = "{FP_A}"\naddress = "10.66.77.1"\n', r"other than the gateway's"),
        (f'[[clients]]\nname = "a"\nfingerprint = "{FP_A}"\naddress = "192.0.2.1"\n', r"in \[vpn\] subnet"),
        (f'[[clients]]\nname = "a"\nfingerprint = "{FP_A}"\nrevoked = "yes"\n', r"revoked = \"yes\": Expected `bool`"),
        ('clients = "alice"\n', r"write each client as a \[\[clients\]\] table"),
        ('[tunnel]\nlisten = "8443"\n', r'\[tunnel\] listen = "8443": write "ADDRESS:PORT"'),
        ('[tunnel]\nkeepalive_s = 60\n', r"keepalive_s = 60.*below dead_after_s"),
        ('[tunnel]\nmtu = 100\n', r"\[tunnel\] mtu = 100"),
        ('[external]\nmode = "raw"\n', r'\[external\] interface = "": raw mode sends through an interface'),
        ('[external]\nmode = "tap"\n', r"\[external\] mode = \"tap\""),
        ('[external]\nnext_hop = "router"\n', r'next_hop = "router": not an IPv4 address'),
        ('[external]\nmac = "02:67:77"\n', r'mac = "02:67:77": write six hex pairs'),
        ('[external]\nmac = "01:00:5e:00:00:01"\n', r"a multicast address"),
        ('[journal]\naudit = "strict"\nfsync = "never"\n', r'\[journal\] fsync = "never": audit = "strict" waits'),
        ('[journal]\naudit = "paranoid"\n', r"\[journal\] audit = \"paranoid\""),
    ],
    ids=["no-fingerprint", "unknown-key", "short-fingerprint", "same-name", "same-fingerprint", "gateway-address",
         "outside-subnet", "not-a-bool", "not-a-table", "listen", "keepalive", "mtu", "raw-no-interface",
         "external-mode", "next-hop", "mac", "mac-multicast", "strict-never", "audit-mode"],
)  # fmt: skip
def test_client_and_tunnel_mistakes_name_the_table_the_key_and_the_fix(text: str, expect: str) -> None:
    with pytest.raises(ConfigError, match=expect) as e:
        config.parse(text, SOURCE)
    assert str(e.value).startswith(SOURCE)


def test_client_toml_parses_and_its_mistakes_name_the_key_and_the_fix() -> None:
    good = (
        f'[gateway]\nendpoint = "192.0.2.1:8443"\nfingerprint = "{FP_A}"\n'
        '[identity]\ncertificate = "a.crt"\nkey = "a.key"\n'
    )
    c = config.parse_client(good, "client.toml")
    assert c.gateway.endpoint == "192.0.2.1:8443" and c.device == "gw0"
    with pytest.raises(ConfigError, match=r'client.toml: \[gateway\] endpoint = "192.0.2.1": write "HOST:PORT"'):
        config.parse_client(good.replace("192.0.2.1:8443", "192.0.2.1"), "client.toml")
    with pytest.raises(ConfigError, match=r"\[gateway\] fingerprint = .*64 hex digits"):
        config.parse_client(good.replace(FP_A, "xyz"), "client.toml")
    with pytest.raises(ConfigError, match=r"client.toml: .*identity.*needs \[gateway\] endpoint"):
        config.parse_client(good.split("[identity]")[0], "client.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.parse_client("[gateway", "client.toml")


def test_the_example_configurations_parse_once_their_fingerprints_are_filled_in():
    root = Path(__file__).resolve().parents[2] / "examples"
    gateway = config.parse((root / "gateway.toml").read_text().replace("<from gw keys new alice-laptop>", "a" * 64))
    assert gateway.clients[0].name == "alice-laptop" and gateway.status.socket == "/run/gw/gw.sock"
    client = (root / "client.toml").read_text().replace("<the gateway's, from gw keys new gateway>", "b" * 64)
    assert config.parse_client(client).gateway.endpoint == "203.0.113.7:8443"


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_bytes(b"[nat]\n# \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        config.load(str(bad))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        config.load_client(str(bad))

"""docker/debian-mirror.sh: bootstrap-base.sh takes its Debian mirror from the machine's apt sources.

The shell functions run for real (bash, awk) against apt trees written into a temporary root.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "docker" / "debian-mirror.sh"

DEB822 = """\
Types: deb
# a comment inside a stanza
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD9K7UDqr4= URIs: http://not.a.field/
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb deb-src
URIs: https://security.example/debian-security
Suites: bookworm-security
Components: main
"""


def call(function: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'set -euo pipefail; . "$0"; {function} "$1"', str(SCRIPT), str(root)],
                          capture_output=True, text=True, timeout=30)


def apt_tree(root: Path, files: dict[str, str], os_id: str = "debian") -> Path:
    for rel, text in {**files, "etc/os-release": f'PRETTY_NAME="x"\nID={os_id}\n'}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_deb822_sources_give_the_mirror_and_the_security_mirror(tmp_path):
    root = apt_tree(tmp_path, {"etc/apt/sources.list.d/debian.sources": DEB822})
    sources = call("apt_deb_sources", root)
    assert sources.returncode == 0 and sources.stdout.splitlines() == [
        "http://mirror.example/debian/ bookworm", "http://mirror.example/debian/ bookworm-updates",
        "https://security.example/debian-security bookworm-security"]
    assert call("debian_mirror", root).stdout == "http://mirror.example/debian\n"
    assert call("debian_security_mirror", root).stdout == "https://security.example/debian-security\n"
    assert call("is_debian", root).returncode == 0


def test_one_line_sources_come_first_and_disabled_or_unreadable_ones_are_skipped(tmp_path):
    root = apt_tree(tmp_path, {
        "etc/apt/sources.list": "# deb http://commented.example/debian bookworm main\n"
                                "deb-src http://src.example/debian bookworm main\n"
                                "deb mirror+file:/etc/apt/mirrors.txt bookworm main\n"
                                "deb [ arch=amd64 signed-by=/k.gpg ] http://one.example/debian bookworm main\n",
        "etc/apt/sources.list.d/a.sources": "Types: deb\nEnabled: no\nURIs: http://off.example/debian\n"
                                            "Suites: bookworm\n",
        "etc/apt/sources.list.d/b.list": "deb http://two.example/debian-security bookworm-security main\n",
        "etc/apt/sources.list.d/c.list.disabled": "deb http://ignored.example/debian bookworm main\n",
    })
    assert call("apt_deb_sources", root).stdout.splitlines() == [
        "mirror+file:/etc/apt/mirrors.txt bookworm", "http://one.example/debian bookworm",
        "http://two.example/debian-security bookworm-security"]
    assert call("debian_mirror", root).stdout == "http://one.example/debian\n"
    assert call("debian_security_mirror", root).stdout == "http://two.example/debian-security\n"


def test_nothing_found_is_an_empty_answer_and_a_failure(tmp_path):
    root = apt_tree(tmp_path,
                    {"etc/apt/sources.list": "deb http://only.example/debian-security bookworm-security main\n"},
                    os_id="ubuntu")
    missing = call("debian_mirror", root)
    assert missing.returncode == 1 and missing.stdout == ""
    assert call("debian_security_mirror", root).returncode == 0
    assert call("is_debian", root).returncode == 1
    assert call("debian_mirror", tmp_path / "no-such-root").returncode == 1

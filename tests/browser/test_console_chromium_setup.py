"""The browser tests' setup: Chromium installed with apt when it is missing and we run as
root with apt-get, else a skip that says what to run; a failed install shows apt's output.
apt and the file checks are faked: nothing here installs anything."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from tests.browser.conftest import APT_INSTALL, APT_UPDATE, ensure_chromium


class FakeApt:
    """apt-get as scripted: each call pops the next exit code; a successful install makes
    the browser present."""

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)
        self.calls: list[tuple[str, ...]] = []
        self.installed = False

    def __call__(self, command: Sequence[str], seconds: float) -> subprocess.CompletedProcess[str]:
        assert seconds > 0  # every step is bounded
        self.calls.append(tuple(command))
        code = self.codes.pop(0)
        if code == 0 and tuple(command) == APT_INSTALL:
            self.installed = True
        return subprocess.CompletedProcess(command, code, f"out of {command[1]}\n", "E: boom\n")

    def missing(self) -> list[str]:
        return [] if self.installed else ["/usr/bin/chromium", "/usr/bin/chromedriver"]


def test_present_browser_needs_nothing() -> None:
    apt = FakeApt()
    assert ensure_chromium(lambda: [], lambda: True, apt) is None
    assert apt.calls == []


def test_missing_browser_is_installed_without_an_update_first() -> None:
    apt = FakeApt(0)
    assert ensure_chromium(apt.missing, lambda: True, apt) is None
    assert apt.calls == [APT_INSTALL]
    assert APT_INSTALL == (
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "chromium",
        "chromium-driver",
    )


def test_failed_install_updates_the_lists_and_tries_again() -> None:
    apt = FakeApt(100, 0, 0)
    assert ensure_chromium(apt.missing, lambda: True, apt) is None
    assert apt.calls == [APT_INSTALL, APT_UPDATE, APT_INSTALL]


def test_install_that_fails_again_fails_with_apt_output() -> None:
    apt = FakeApt(100, 0, 100)
    with pytest.raises(pytest.fail.Exception, match=r"(?s)exit 100.*out of install.*E: boom"):
        ensure_chromium(apt.missing, lambda: True, apt)


def test_install_that_hangs_fails_naming_the_command() -> None:
    def hanging(command: Sequence[str], seconds: float) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(list(command), seconds, output="Reading package lists")

    with pytest.raises(pytest.fail.Exception, match=r"apt-get install .* did not finish in 300"):
        ensure_chromium(FakeApt().missing, lambda: True, hanging)


def test_without_root_or_apt_the_tests_skip_with_the_command_to_run() -> None:
    apt = FakeApt()
    reason = ensure_chromium(apt.missing, lambda: False, apt)
    assert apt.calls == []
    assert reason == (
        "/usr/bin/chromium, /usr/bin/chromedriver missing; install with: "
        "sudo apt-get install -y --no-install-recommends chromium chromium-driver"
    )

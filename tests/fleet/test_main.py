"""Where the fleet harness cannot run, it says why in one line and exits 2."""

from __future__ import annotations

import pytest

from fleet import __main__ as fleet_main


def test_not_root_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fleet_main.os, "geteuid", lambda: 1000)
    assert fleet_main.main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs root" in err


def test_missing_tun_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_main.os, "geteuid", lambda: 0)
    monkeypatch.setattr(fleet_main.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(fleet_main.os.path, "exists", lambda path: path != "/dev/net/tun")
    assert "/dev/net/tun" in (fleet_main.cannot_run() or "")

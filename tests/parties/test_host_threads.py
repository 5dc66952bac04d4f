"""Party processes on one host get a share of its cores, unless the user chose."""

import sys

from veil.parties import host_threads, launch
from veil.parties.host_threads import THREADS_VARIABLE, shared_host_env


def test_each_of_three_parties_gets_a_third_of_the_cores(monkeypatch):
    monkeypatch.setattr(host_threads, "host_cores", lambda: 16)
    assert shared_host_env({})[THREADS_VARIABLE] == "5"
    monkeypatch.setattr(host_threads, "host_cores", lambda: 2)
    assert shared_host_env({"PATH": "/bin"}) == {"PATH": "/bin", THREADS_VARIABLE: "1"}


def test_a_users_thread_count_is_kept():
    assert shared_host_env({THREADS_VARIABLE: "7"})[THREADS_VARIABLE] == "7"


def test_launched_parties_get_the_share(monkeypatch):
    """`veil launch` starts every party with the variable set (exit 0 only if it is)."""
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    expected = shared_host_env({})[THREADS_VARIABLE]
    check = f"import os, sys; sys.exit(os.environ.get({THREADS_VARIABLE!r}) != {expected!r})"
    monkeypatch.setattr(launch, "party_command", lambda *args: [sys.executable, "-c", check])
    assert launch.launch("unused.toml", []) == 0

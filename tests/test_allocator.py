"""The CLI restarts itself once with glibc malloc tunables (embedtune.allocator)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from embedtune.allocator import OPT_OUT, TUNABLES, tuned_environment

glibc_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc Linux only"
)

SCRIPT = (
    "import os, sys\n"
    "from embedtune.allocator import reexec_with_tuned_allocator\n"
    "print('start', flush=True)\n"
    "reexec_with_tuned_allocator()\n"
    "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:], os.getpid())\n"
)


def _run(env: dict[str, str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, "a b", "--flag"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@glibc_linux
def test_the_process_restarts_once_with_the_tunables_and_its_arguments():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT)}
    lines = _run(env)
    assert lines[:2] == ["start", "start"]  # ran again from the top, once
    tunables, rest = lines[2].split(" ", 1)
    assert tunables == TUNABLES and rest.startswith("['a b', '--flag']")


def test_user_settings_and_the_opt_out_are_left_alone():
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT)}
    assert tuned_environment({**base, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) is None
    assert tuned_environment({**base, OPT_OUT: "system"}) is None
    lines = _run({**base, OPT_OUT: "system"})
    assert lines[0] == "start" and lines[1].startswith("None ['a b', '--flag']")

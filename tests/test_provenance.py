"""Provenance: the git sha of the code that ran. A GPU host gets a copied tree whose .git may be stale, so the sha
passed in the environment wins over what git says there."""
import subprocess

from harness.provenance import PROJECT_ROOT, git_state


def test_git_sha_of_this_checkout(monkeypatch):
    monkeypatch.delenv("MEMBENCH_GIT_SHA", raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    state = git_state()
    assert state["git_sha"] == head.strip() and isinstance(state["git_dirty"], bool)


def test_environment_sha_wins_over_git(monkeypatch):
    monkeypatch.setenv("MEMBENCH_GIT_SHA", "0123abc")
    monkeypatch.setenv("MEMBENCH_GIT_DIRTY", "0")
    assert git_state() == {"git_sha": "0123abc", "git_dirty": False}
    monkeypatch.delenv("MEMBENCH_GIT_DIRTY")
    assert git_state() == {"git_sha": "0123abc", "git_dirty": None}

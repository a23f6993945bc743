"""The repository stands alone and speaks about the product, not about how it was made.

Every tracked file is read: none may point outside the repository (a sibling
folder, a machine's absolute path), and none may talk about how the work was
organised (numbered work items, working sessions, where a checkout lived). The patterns are
assembled from parts so that this file does not match them itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SHARED = "sha" + "red"
OUTSIDE = {
    "a sibling folder": re.compile(r"\.\./+" + SHARED + r"\b"),
    "a parent folder's subfolder": re.compile(r"\bparents?\b[^\n]{0,30}/\s*[\"']" + SHARED),
    "an absolute machine path": re.compile(r"(?<![\w.-])/(?:" + "wo" + r"rk|home|root|Users)/\w"),
}
SESSION = "ses" + "sion"
ORGANISATION = {
    "a numbered work item": re.compile(r"\b(?:" + "iss" + r"ues?|PR) #?[0-9]+\b", re.I),
    "a working session": re.compile(
        r"\b(?:this|last|previous|earlier|next|same) " + SESSION + r"s?\b", re.I
    ),
    "a checkout of the work": re.compile(r"\b" + "work" + r"trees?\b", re.I),
    "the date of a run": re.compile(r"\bwhen (?:a|the) " + r"run was made\b", re.I),
}


def tracked_texts() -> dict[str, str]:
    """Tracked files' text by path; binary files (a NUL byte) left out."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.split(b"\0")
    texts = {}
    for name in filter(None, names):
        path = REPO / name.decode()
        if not path.is_file():  # deleted in the work tree, not yet in git
            continue
        data = path.read_bytes()
        if b"\0" not in data[:8192]:
            texts[name.decode()] = data.decode("utf-8", errors="replace")
    assert texts, "git ls-files listed no text files"
    return texts


def matches(texts: dict[str, str], patterns: dict[str, re.Pattern]) -> list[str]:
    found = []
    for path, text in sorted(texts.items()):
        for number, line in enumerate(text.splitlines(), 1):
            found += [
                f"{path}:{number}: {what}: {line.strip()[:120]}"
                for what, pattern in patterns.items()
                if pattern.search(line)
            ]
    return found


def test_no_tracked_file_reads_a_path_outside_the_repository():
    assert matches(tracked_texts(), OUTSIDE) == []


def test_no_tracked_file_talks_about_how_the_work_was_organised():
    assert matches(tracked_texts(), ORGANISATION) == []


# folder -> the textfleet subpackages its modules must not import (docs/ARCHITECTURE.md)
LAYERS = {
    "engine": ("serve", "models", "cli"),
    "models": ("serve", "cli"),
    "serve": ("models", "cli"),
    "textfleet/batch": ("serve", "models", "cli"),  # offline runs: the engine only
}


def test_layers_import_only_downwards():
    found = []
    for folder, banned in LAYERS.items():
        pattern = re.compile(
            r"^\s*(?:from|import) textfleet\.(?:" + "|".join(banned) + r")\b", re.M
        )
        for path in sorted((REPO / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            found += [
                f"{path.relative_to(REPO)}: {m.group(0).strip()}" for m in pattern.finditer(text)
            ]
    assert found == []


def test_the_patterns_catch_what_they_are_for():
    bad = {
        "a.py": 'ROOT.parent / "' + SHARED + '" / "DESIGN.md"',
        "b.md": "see ../" + SHARED + "/STYLE.md or /" + "work/main/x",
        "c.yaml": "# the task models (" + "iss" + "ue 4)",
        "d.md": "Three earlier runs of this " + SESSION + ": 1.9x",
    }
    assert len(matches(bad, OUTSIDE)) == 3
    assert len(matches(bad, ORGANISATION)) == 2
    fine = {"e.py": "session = ort.InferenceSession(path)  # the lone-text session"}
    assert matches(fine, {**OUTSIDE, **ORGANISATION}) == []

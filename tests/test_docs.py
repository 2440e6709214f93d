"""The documentation's lists that the code also defines stay the code's."""

from __future__ import annotations

import re
from pathlib import Path

from crypton.domain.orders import REASON_CODES

ROOT = Path(__file__).resolve().parent.parent


def _section(path: Path, heading: str) -> str:
    text = path.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


def test_the_api_reference_explains_every_reason_code() -> None:
    table = _section(ROOT / "docs" / "api.md", "## Reason codes")
    documented = re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.MULTILINE)
    assert sorted(documented) == sorted(REASON_CODES)
    assert len(documented) == len(set(documented))


def test_the_readme_names_every_reason_code() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("**Reasons:**")
    paragraph = text[start : text.index("\n- ", start)]
    named = re.findall(r"`([a-z_]+)`", paragraph)
    assert set(REASON_CODES) <= set(named), sorted(set(REASON_CODES) - set(named))


def test_every_setting_the_code_reads_is_documented() -> None:
    """Each ``CRYPTON_*`` variable in the shipped code is named in the README or in
    docs/operations.md, where an operator looks for it."""
    code = "".join(
        path.read_text()
        for package in ("crypton", "dataflows", "api")
        for path in sorted((ROOT / package).rglob("*.py"))
    )
    docs = (ROOT / "README.md").read_text() + (ROOT / "docs" / "operations.md").read_text()
    used = set(re.findall(r"CRYPTON_[A-Z0-9_]*[A-Z0-9]", code))
    assert used, "no settings found: the scan is broken"
    assert sorted(v for v in used if v not in docs) == []

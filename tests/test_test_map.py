"""tests/README.md maps every test file to the module(s) it specifies (issue 19: tests as specifications)."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_test_file_is_listed_in_the_tests_readme_map():
    text = (TESTS / "README.md").read_text("utf-8")
    files = sorted(p.relative_to(TESTS).as_posix() for p in TESTS.rglob("test_*.py"))
    assert len(files) > 50
    missing = [f for f in files if Path(f).name not in text]
    assert not missing, f"tests/README.md does not say what these specify: {missing}"

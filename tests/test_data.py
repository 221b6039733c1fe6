"""Data layer: folders, CSV manifests, few-shot sampling, label noise, and the errors users hit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgeprompt.data import apply_noise, load_csv, load_folder, load_labeled, parse_noise, sample_few_shot
from edgeprompt.data.folder import match_classes
from edgeprompt.errors import ConfigError, DataError
from tests.conftest import make_folder


def test_folder_nested_extensions_hidden(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", per_class=3)
    (root / "red" / "sub").mkdir()
    (root / "red" / "000.png").rename(root / "red" / "sub" / "NESTED.PNG")  # nested + upper-case extension
    (root / "red" / ".hidden.png").write_bytes((root / "red" / "001.png").read_bytes())
    (root / ".cache").mkdir()
    ds = load_folder(root)
    assert ds.classnames == ("blue", "green", "red")
    assert ds.counts() == [3, 3, 3]
    assert not any(p.name.startswith(".") for p in ds.paths)
    assert any(p.name == "NESTED.PNG" for p in ds.paths)


def test_underscores_become_spaces_and_classnames_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", per_class=2)
    (root / "red").rename(root / "dark_red")
    assert "dark red" in load_folder(root).classnames
    names = tmp_path / "names.txt"
    names.write_text("# comment\nazure\nemerald\ncrimson\n")
    assert load_labeled(root, classnames_file=names).classnames == ("azure", "emerald", "crimson")


def test_problems_are_skipped_with_names_or_fatal_with_strict(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_folder(tmp_path / "d", per_class=3)
    (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "green" / "notes.txt").write_text("hello")
    (root / "empty_class").mkdir()
    ds = load_folder(root)
    assert ds.classnames == ("blue", "green", "red")
    reasons = {Path(f).name: r for f, r in ds.skipped}
    assert "broken.jpg" in reasons and "notes.txt" in reasons and "empty_class" in reasons
    assert "broken.jpg" in caplog.text
    with pytest.raises(DataError, match="empty_class has no images"):
        load_folder(root, strict=True)
    (root / "empty_class").rmdir()
    with pytest.raises(DataError, match="notes.txt|broken.jpg"):
        load_folder(root, strict=True)
    (root / "green" / "notes.txt").unlink()
    with pytest.raises(DataError, match="broken.jpg"):
        load_folder(root, strict=True)


def test_single_class_and_missing_dir(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", per_class=2)
    for name in ("green", "blue"):
        for f in (root / name).iterdir():
            f.unlink()
        (root / name).rmdir()
    with pytest.raises(DataError, match="at least 2"):
        load_folder(root)
    with pytest.raises(DataError, match="not a directory"):
        load_folder(tmp_path / "nope")


def test_csv_manifest(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", per_class=2)
    csv = tmp_path / "m.csv"
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}\n" for p in sorted(root.rglob("*.png"))]
    csv.write_text("path,label\n" + "".join(rows))
    ds = load_csv(csv)
    assert ds.classnames == ("blue", "green", "red") and len(ds) == 6
    one = next(root.rglob("*.png"))
    base = csv.read_text()
    csv.write_text(base + f"{one.relative_to(tmp_path)},{one.parent.name}\n")  # the same row twice: used once
    assert len(load_csv(csv)) == 6
    csv.write_text(base + f"{one.relative_to(tmp_path)},purple\n")  # one image, two labels: refused
    with pytest.raises(DataError, match="two labels"):
        load_csv(csv)
    shutil.copy(one, one.with_name("extra.png"))
    csv.write_text(base + f"{one.with_name('extra.png').relative_to(tmp_path)},purple\n")
    with pytest.raises(DataError, match="unknown label 'purple'"):
        load_csv(csv, classnames=["blue", "green", "red"])
    gone = tmp_path / "gone.csv"
    gone.write_text("path,label\n" + "".join(f"nowhere/{i}.png,red\n" for i in range(5)))
    with pytest.raises(DataError, match="none of the 5 files .* exists"):
        load_csv(gone)
    folder = make_folder(tmp_path / "x.csv", per_class=1)  # a folder whose name ends in .csv is a folder
    assert len(load_labeled(folder)) == 3
    link = root / "everything"
    link.symlink_to(root, target_is_directory=True)  # a class folder that links back to the data root
    with pytest.raises(DataError, match="inside or around the data folder"):
        load_folder(root)
    link.unlink()


def test_test_set_classes_must_match(tmp_path: Path) -> None:
    test = load_folder(make_folder(tmp_path / "t", per_class=2))
    with pytest.raises(DataError, match="not tuned on"):
        match_classes(["blue", "green", "yellow"], test)
    reindexed = match_classes(["red", "green", "blue", "yellow"], test)
    assert [reindexed.classnames[y] for y in reindexed.labels] == [test.classnames[y] for y in test.labels]


def test_few_shot_is_seeded(tmp_path: Path) -> None:
    ds = load_folder(make_folder(tmp_path / "d", per_class=6), check_images=False)
    a, b, c = (sample_few_shot(ds, 2, s) for s in (1, 1, 2))
    assert a.paths == b.paths and a.paths != c.paths
    assert a.counts() == [2, 2, 2]


@pytest.mark.parametrize("kind", ["sym", "asym"])
@pytest.mark.parametrize("rate", [0.25, 0.5, 0.75])
def test_noise_flips_exactly_floor_rate_n(kind: str, rate: float) -> None:
    labels = [i % 10 for i in range(160)]
    noisy, clean = apply_noise(labels, 10, parse_noise(f"{kind}:{rate}"), seed=3)
    flipped = [i for i, c in enumerate(clean) if not c]
    assert len(flipped) == int(rate * 160)
    assert all(noisy[i] != labels[i] for i in flipped)
    if kind == "asym":
        assert all(noisy[i] == (labels[i] + 1) % 10 for i in flipped)
    assert apply_noise(labels, 10, parse_noise(f"{kind}:{rate}"), seed=3) == (noisy, clean)


def test_sym_noise_uses_every_other_class() -> None:
    labels = [0] * 2000
    noisy, _ = apply_noise(labels, 5, parse_noise("sym:0.5"), seed=0)
    assert set(noisy) == {0, 1, 2, 3, 4}


def test_flip_map(tmp_path: Path) -> None:
    fm = tmp_path / "flips.json"
    fm.write_text('{"red": "blue"}')
    names = ["blue", "green", "red"]
    labels = [0, 1, 2] * 10
    noisy, clean = apply_noise(labels, 3, parse_noise(f"map:{fm}:0.5"), seed=0, classnames=names)
    flipped = [i for i, c in enumerate(clean) if not c]
    assert len(flipped) == 5 and all(labels[i] == 2 and noisy[i] == 0 for i in flipped)


@pytest.mark.parametrize(("bad", "words"), [("gaussian:0.2", "Use none, sym:R"), ("sym:1.5", r"must be in \[0, 1\)"),
                                           ("sym:abc", "is not a number"), ("map:0.3", "expected map:FILE:RATE")])
def test_bad_noise_specs(bad: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_noise(bad)


def test_noise_percent_and_none() -> None:
    assert parse_noise("sym:50%").rate == 0.5
    assert str(parse_noise("none")) == "none"


def test_sample_checked_decodes_only_the_picks_and_redraws_unreadable_ones(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A folder indexed without decoding; the few-shot sampler checks only what it picks, replaces a broken pick
    from the same class, and gives exactly sample_few_shot's answer when nothing is broken."""
    from edgeprompt.data import folder as folder_mod
    from edgeprompt.data.fewshot import sample_checked, sample_few_shot
    from edgeprompt.data.folder import load_labeled
    from tests.conftest import make_folder

    root = make_folder(tmp_path / "d", per_class=10, size=16)
    decoded: list[str] = []
    real = folder_mod.check_image
    monkeypatch.setattr(folder_mod, "check_image", lambda p: decoded.append(str(p)) or real(p))
    data = load_labeled(root, check_images=False)
    assert decoded == []  # indexing decodes nothing
    want = sample_few_shot(data, 2, seed=3)
    got = sample_checked(data, 2, seed=3)
    assert got.paths == want.paths and got.labels == want.labels and len(decoded) == len(want.paths)
    broken = want.paths[0]
    broken.write_bytes(b"not a png")
    fixed = sample_checked(data, 2, seed=3)
    assert broken not in fixed.paths and fixed.counts() == want.counts()  # redrawn from the same class
    assert (str(broken), next(r for p, r in fixed.skipped if p == str(broken))) in fixed.skipped
    with pytest.raises(DataError, match="drop --strict"):
        sample_checked(data, 2, seed=3, strict=True)


def test_image_checks_are_remembered_until_the_file_changes(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import os

    from edgeprompt.data import folder as folder_mod
    from edgeprompt.data.folder import ImageChecks
    from tests.conftest import make_folder

    root = make_folder(tmp_path / "d", per_class=3, size=16)
    paths = sorted(root.rglob("*.png"))
    decoded: list[str] = []
    real = folder_mod.check_image
    monkeypatch.setattr(folder_mod, "check_image", lambda p: decoded.append(str(p)) or real(p))
    checks = ImageChecks(tmp_path / "cache" / "files.sqlite")
    assert checks.reasons(paths) == [None] * len(paths) and len(decoded) == len(paths)
    decoded.clear()
    assert ImageChecks(tmp_path / "cache" / "files.sqlite").reasons(paths) == [None] * len(paths)
    assert decoded == []  # another process (a new instance) reads the verdicts
    paths[0].write_bytes(b"broken now")
    os.utime(paths[0], ns=(1, 1))  # a changed size and time
    reasons = checks.reasons(paths)
    assert decoded == [str(paths[0].resolve())] and reasons[0] and "not a readable image" in reasons[0]
    assert ImageChecks(tmp_path / "new" / "f" / "files.sqlite").reasons(paths[1:2]) == [None]  # made on first use

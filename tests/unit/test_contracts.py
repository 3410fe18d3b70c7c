"""components/contracts.py: the shared names and the one version listing."""

import subprocess
import sys

from components import contracts


def test_contracts_import_no_tensorflow():
    code = "import sys, components.contracts; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_complete_versions_are_listed(tmp_path):
    serving = tmp_path / "serving"
    for name, complete in (("1", True), ("2", False), ("10", True), (".incoming-ab12", True),
                           ("notes", True)):
        (serving / name).mkdir(parents=True)
        if complete:
            (serving / name / contracts.COMPLETE_MARKER).write_text("")
    (serving / "3").write_text("a file, not a version")
    assert contracts.numbered_versions(str(serving)) == [1, 2, 3, 10]
    assert contracts.list_versions(str(serving)) == [1, 10]
    assert contracts.list_versions(str(tmp_path / "missing")) == []


def test_labels_are_read_by_newline_only():
    # str.splitlines() would also split on U+2028, \x1c, \x85 ...: a class name
    # holding one would shift every later label by one.
    assert contracts.read_labels("cat\ndog\u2028x\nfish\n") == ["cat", "dog\u2028x", "fish"]
    assert contracts.read_labels("a\nb") == ["a", "b"]
    assert contracts.read_labels("") == []


def test_join_keeps_uris_posix_and_paths_native():
    assert contracts.join("s3://bucket/root/", "serving", "1") == "s3://bucket/root/serving/1"
    assert contracts.join("/w", "serving", "1") == "/w/serving/1"


def test_non_input_keys_are_every_raw_key_but_the_image():
    raw = {contracts.IMAGE_KEY, contracts.LABEL_KEY, contracts.LABEL_NAME_KEY,
           contracts.RELATIVE_PATH_KEY, contracts.HEIGHT_KEY, contracts.WIDTH_KEY,
           contracts.CONTENT_SHA256_KEY, contracts.PIXEL_SIGNATURE_KEY}
    assert set(contracts.NON_INPUT_KEYS) == raw - {contracts.IMAGE_KEY}
    assert len(set(contracts.NON_INPUT_KEYS)) == len(contracts.NON_INPUT_KEYS)


def test_line_breaks_are_every_character_splitlines_splits_on():
    splitters = {chr(c) for c in range(0x110000) if len(f"a{chr(c)}b".splitlines()) == 2}
    assert set(contracts.LINE_BREAKS) == splitters

from pathlib import Path

import numpy as np
import pytest

from cordiale.core.errors import ConfigError, ContractViolation, DataError
from cordiale.data.imaging import (
    ImagingContract,
    Manifest,
    ManifestViolation,
    validate_manifest,
)
from cordiale.data.imaging.validation import MAX_ROWS_PER_PROBLEM

CONTRACT = ImagingContract(
    name="chest-ct", modality="CT", ndim=2, shape=[16, 16], min_images=5, min_per_class=2
)


def write_manifest(
    folder: Path, rows: list[tuple[str, ...]], header: str = "path,label,patient_id"
):
    text = "\n".join([header, *(",".join(r) for r in rows)]) + "\n"
    (folder / "manifest.csv").write_text(text, encoding="utf-8")
    return folder / "manifest.csv"


def good_scans(folder: Path, dicom_writer, n: int = 4) -> list[tuple[str, str, str]]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        dicom_writer(folder / "scans" / f"p{i}.dcm", rng.integers(0, 1000, size=(16, 16)))
        rows.append((f"scans/p{i}.dcm", str(i % 2), f"P{i}"))
    return rows


# -- the contract -----------------------------------------------------------------------------


def test_contract_from_toml_and_its_checks(tmp_path):
    (tmp_path / "c.toml").write_text(
        '[contract]\nname = "brain"\nmodality = "mr"\nndim = 3\nshape = [8, 8, 4]\n'
        "spacing_mm = [1.0, 1.0, 2.5]\nlabel_set = [0, 1, 2]\n"
    )
    (tmp_path / "bad.toml").write_text('name = "b"\nndim = 4\ncolour = true\n')

    c = ImagingContract.from_toml(tmp_path / "c.toml")
    with pytest.raises(ConfigError) as bad:
        ImagingContract.from_toml(tmp_path / "bad.toml")

    assert c.modality == "MR" and c.shape == [8, 8, 4] and c.label_set == [0, 1, 2]
    assert "PatientName" in c.identifier_fields
    assert c.spacing_matches((1.04, 0.97, 2.5)) and not c.spacing_matches((1.2, 1.0, 2.5))
    assert "colour: Extra inputs are not permitted" in str(bad.value)
    assert "ndim: Input should be 2 or 3" in str(bad.value)
    for raw, message in [
        ({"identifier_fields": ["PatientsName"]}, "unknown DICOM keyword"),
        ({"modality": "C T"}, "not a DICOM modality code"),
        ({"label_set": [0, 0]}, "duplicate labels"),
        ({"ndim": 3, "spacing_mm": [1, 1]}, "spacing_mm has 2 axes"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ImagingContract.parse({"name": "x", **raw})
    assert ImagingContract(name="x", modality="Any").any_modality


# -- reading the manifest ---------------------------------------------------------------------


def test_manifest_rows_subgroups_and_spreadsheet_row_numbers(tmp_path):
    text = "\ufeffpath, label ,patient_id,sex,scanner\na.dcm,1,P1,F,GE\n\n b.png ,0,P2,M\n"
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")

    m = Manifest.read(tmp_path / "m.csv")

    assert len(m) == 2 and m.root == tmp_path and m.subgroup_columns == ["sex", "scanner"]
    first, second = m.rows
    assert (first.row, first.path, first.label, first.patient_id) == (2, "a.dcm", "1", "P1")
    assert first.subgroups == {"sex": "F", "scanner": "GE"}
    assert (second.row, second.path, second.subgroups["scanner"]) == (4, "b.png", "")
    assert second.where == "row 4 (b.png)" and second.ref(m.root).path == tmp_path / "b.png"


def test_manifest_that_cannot_be_used_says_why_without_its_path_in_public(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.dcm,1\n")
    (tmp_path / "empty.csv").write_text("")

    with pytest.raises(DataError) as missing_cols:
        Manifest.read(tmp_path / "m.csv")
    with pytest.raises(DataError, match="is empty"):
        Manifest.read(tmp_path / "empty.csv")
    with pytest.raises(DataError, match="does not exist"):
        Manifest.read(tmp_path / "nope.csv")

    assert "lacks column(s) path, patient_id" in str(missing_cols.value)
    assert str(tmp_path) not in missing_cols.value.public_message


# -- validation -------------------------------------------------------------------------------


def test_valid_manifest_gives_one_record_per_row(tmp_path, dicom_writer):
    rows = good_scans(tmp_path, dicom_writer, n=5)
    manifest = Manifest.read(write_manifest(tmp_path, rows))

    records = validate_manifest(manifest, CONTRACT)

    assert [r.row for r in records] == [2, 3, 4, 5, 6]
    assert [r.label for r in records] == [0, 1, 0, 1, 0]
    assert records[0].image.array.shape == (16, 16) and records[0].patient_id == "P0"


def test_every_bad_row_is_listed_in_one_violation(tmp_path, dicom_writer):
    rows = good_scans(tmp_path, dicom_writer)
    scans = tmp_path / "scans"
    (scans / "corrupt.dcm").write_bytes(np.random.default_rng(1).bytes(600))
    whole = (scans / "p0.dcm").read_bytes()
    (scans / "truncated.dcm").write_bytes(whole[: len(whole) - 100])  # pixel data cut short
    dicom_writer(scans / "small.dcm", np.full((8, 8), 4321))
    dicom_writer(scans / "label.dcm", np.full((16, 16), 4321))
    dicom_writer(scans / "mr.dcm", np.full((16, 16), 4321), modality="MR")
    dicom_writer(scans / "named.dcm", np.zeros((16, 16)), patient_name="Doe^Jane")
    rows += [
        ("scans/missing.dcm", "0", "P5"),
        ("scans/corrupt.dcm", "1", "P6"),
        ("scans/truncated.dcm", "1", "P6"),
        ("scans/small.dcm", "0", "P7"),
        ("scans/label.dcm", "7", "P8"),
        ("scans/mr.dcm", "1", "P9"),
        ("scans/named.dcm", "0", "P10"),
    ]
    manifest = Manifest.read(write_manifest(tmp_path, rows))

    with pytest.raises(ContractViolation) as info:
        validate_manifest(manifest, CONTRACT, dataset="site-a")

    e = info.value
    assert isinstance(e, ManifestViolation) and e.dataset == "site-a"
    assert e.problems == [
        "row 6 (scans/missing.dcm): file not found",
        "row 7 (scans/corrupt.dcm): cannot be read as DICOM (InvalidDicomError)",
        "row 8 (scans/truncated.dcm): cannot be read as DICOM (ValueError)",
        "row 9 (scans/small.dcm): shape 8×8, the contract wants 16×16",
        "row 10 (scans/label.dcm): label outside the contract's label set {0, 1}",
        "row 11 (scans/mr.dcm): modality MR, the contract wants CT",
        "row 12 (scans/named.dcm): not de-identified, identifying attribute(s) present: "
        "PatientName",
    ]
    text = str(e)
    assert "7 problems" in text
    assert "Doe" not in text and "Jane" not in text and "4321" not in text
    assert "scans/" not in e.public_message and "row 7: cannot be read as DICOM" in e.public_message


def test_identifiers_refused_blanked_file_passes(tmp_path, dicom_writer):
    pixels = np.arange(256).reshape(16, 16)
    dicom_writer(tmp_path / "named.dcm", pixels, patient_name="Doe^Jane")
    dicom_writer(tmp_path / "blank.dcm", pixels, patient_name="")
    contract = CONTRACT.model_copy(update={"min_images": 1, "min_per_class": 1, "label_set": [1]})

    with pytest.raises(ContractViolation, match="identifying attribute"):
        validate_manifest(
            Manifest.read(write_manifest(tmp_path, [("named.dcm", "1", "P1")])), contract
        )
    records = validate_manifest(
        Manifest.read(write_manifest(tmp_path, [("blank.dcm", "1", "P1")])), contract
    )

    assert len(records) == 1
    np.testing.assert_array_equal(records[0].image.array, pixels)


def test_cells_labels_duplicates_spacing_and_counts(tmp_path, dicom_writer):
    dicom_writer(tmp_path / "a.dcm", np.zeros((16, 16)), spacing=(0.5, 0.5))
    rows = [
        ("a.dcm", "1", "P1"),
        ("a.dcm", "1", "P2"),
        ("", "0", "P3"),
        ("b.dcm", "one", ""),
        ("c.dcm", "", "P4", "extra"),
    ]
    contract = CONTRACT.model_copy(update={"spacing_mm": [1.0, 1.0], "min_per_class": 2})

    with pytest.raises(ContractViolation) as info:
        validate_manifest(Manifest.read(write_manifest(tmp_path, rows)), contract)

    assert info.value.problems == [
        "row 2 (a.dcm): voxel spacing 0.5×0.5 mm, the contract wants 1×1 mm (±5%)",
        "row 3 (a.dcm): the same image as row 2",
        "row 4: no path",
        "row 5 (b.dcm): no patient_id",
        "row 5 (b.dcm): the label is not an integer",
        "row 5 (b.dcm): file not found",
        "row 6 (c.dcm): 1 cell(s) beyond the header's columns",
        "row 6 (c.dcm): no label",
        "row 6 (c.dcm): file not found",
        "label 0: 1 image(s), the contract needs at least 2",
    ]


def test_many_rows_with_one_problem_are_summarised(tmp_path):
    n = MAX_ROWS_PER_PROBLEM + 5
    rows = [(f"gone{i}.dcm", str(i % 2), f"P{i}") for i in range(n)]

    with pytest.raises(ContractViolation) as info:
        validate_manifest(Manifest.read(write_manifest(tmp_path, rows)), CONTRACT)

    problems = info.value.problems
    assert len(problems) == MAX_ROWS_PER_PROBLEM + 1
    assert problems[-1] == "... and 5 more row(s) with a missing or unreadable image"


def test_modality_unrecorded_by_the_format_is_not_checked_but_spacing_is(tmp_path):
    np.savez(tmp_path / "m.npz", images=np.zeros((4, 16, 16), dtype=np.uint8))
    rows = [(f"m.npz#images/{i}", str(i % 2), f"P{i}") for i in range(4)]
    manifest = Manifest.read(write_manifest(tmp_path, rows))
    contract = CONTRACT.model_copy(update={"min_images": 4})

    records = validate_manifest(manifest, contract)
    with pytest.raises(ContractViolation, match="no voxel spacing recorded"):
        validate_manifest(manifest, contract.model_copy(update={"spacing_mm": [1.0, 1.0]}))

    assert len(records) == 4 and records[0].image.meta.modality is None

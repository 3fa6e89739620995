"""Readers: every file type users have (JSON/JSONL/CSV/TSV/Parquet/TXT, gzipped, folders), detected
encodings, per-record InvalidRecord vs file-level DataError, line numbers, and memory that stays flat.

Real files under ``../shared/data`` are used wherever one exists (GB18030 medical data, GPQA's U+2028,
JSON Lines named ``.json``, gzipped hh-rlhf)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tunelab.data import encoding as encoding_module
from tunelab.data.encoding import detect_encoding, resolve_encoding
from tunelab.data.readers import READERS, InvalidRecord, list_data_files, read_records, read_text
from tunelab.errors import ConfigError, DataError

# The first 1000 records of the shared 内科 files (see fixtures/README.md), still GB18030-encoded.
MEDICAL_CSV = "medical_sample.csv"
MEDICAL_TXT = "medical_sample.txt"


def records_of(path: Path, **options: Any) -> list[tuple[int, Any]]:
    return [(line, record) for _, line, record in read_records(path, **options)]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def gzip_copy(source: Path, target: Path) -> Path:
    with source.open("rb") as plain, gzip.open(target, "wb") as packed:
        shutil.copyfileobj(plain, packed)
    return target


def nonblank_lines(raw: bytes) -> int:
    return sum(1 for line in raw.split(b"\n") if line.strip())


@pytest.fixture(scope="module")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"


# --- real files ---------------------------------------------------------------------------------------

def test_medical_csv_is_gb18030_with_1000_rows(data_dir: Path) -> None:
    path = data_dir / "medical" / MEDICAL_CSV
    assert resolve_encoding(path).codec == "gb18030"
    records = records_of(path)
    assert len(records) == 1000
    assert all(set(record) == {"department", "title", "ask", "answer"} for _, record in records)
    first_line, first = records[0]
    assert first_line == 2 and first["title"] == "高血压患者能吃党参吗？" and first["department"] == "心血管科"
    # quoted multi-line fields: starts are increasing, and the file has more lines than rows
    lines = [line for line, _ in records]
    assert lines == sorted(set(lines)) and lines[-1] < path.read_bytes().count(b"\n") + 1


def test_medical_csv_line_numbers_match_csv_module(data_dir: Path) -> None:
    path = data_dir / "medical" / MEDICAL_CSV
    reader = csv.reader(io.StringIO(path.read_bytes().decode("gb18030"), newline=""))
    expected, start = [], 1
    for row in reader:
        if row:
            expected.append(start)
        start = reader.line_num + 1
    assert [line for line, _ in records_of(path)] == expected[1:]


def test_medical_txt_paragraphs(data_dir: Path) -> None:
    path = data_dir / "medical" / MEDICAL_TXT
    blocks = records_of(path, text_split="paragraph")
    assert len(blocks) == 1000
    line, first = blocks[0]
    assert line == 1 and first["text"].startswith("高血压患者能吃党参吗？,")
    assert "\n高血压病人可以口服党参的" in first["text"]  # the answer line stays in its question's block
    assert len(records_of(path)) == nonblank_lines(path.read_bytes())  # "line" mode: one per non-empty line
    (line, whole), = records_of(path, text_split="file")
    assert line == 1 and whole["text"] == path.read_bytes().decode("gb18030")


@pytest.mark.parametrize(("relative", "count"), [
    ("hh-rlhf/test.jsonl.gz", 2312),
    ("gsm8k/train.jsonl", 1000),
    ("gsm8k/test.jsonl", 1319),
    ("belle/eval_set.json", 1000),  # JSON Lines named .json
    ("advertisegen/dev.json", 1070),
    ("alpaca/alpaca_5000.json", 5000),  # one-line JSON array
    ("llamafactory/wiki_demo.txt", 30),
])
def test_real_file_counts(data_dir: Path, relative: str, count: int) -> None:
    records = records_of(data_dir / relative)
    assert len(records) == count
    assert not any(isinstance(record, InvalidRecord) for _, record in records)


def test_every_limo_subfolder_reads(data_dir: Path) -> None:
    folders = sorted(p for p in (data_dir / "limo").iterdir() if p.is_dir())
    assert len(folders) == 10
    for folder in folders:
        raw = b"".join(p.read_bytes() for p in sorted(folder.rglob("*.jsonl")))
        records = records_of(folder)
        assert len(records) == nonblank_lines(raw), folder.name
        assert all(isinstance(record, dict) for _, record in records), folder.name
    gpqa = data_dir / "limo" / "gpqa" / "test.jsonl"
    assert "\u2028".encode() in gpqa.read_bytes()
    assert [line for line, _ in records_of(gpqa)] == list(range(1, 199))


# --- formats ------------------------------------------------------------------------------------------

def test_parquet_rows_in_batches(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": f"q{i}", "output": "答" * (i % 5), "score": i / 2} for i in range(2500)]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=700)
    records = records_of(path)
    assert [line for line, _ in records] == list(range(1, 2501))
    assert [record for _, record in records] == rows
    assert records_of(gzip_copy(path, tmp_path / "train.parquet.gz")) == records
    with pytest.raises(DataError, match="not a readable Parquet file") as info:
        list(read_records(write(tmp_path / "bad.parquet", "not parquet at all")))
    assert info.value.file == str(tmp_path / "bad.parquet")


def test_tsv_and_delimiter(tmp_path: Path) -> None:
    tsv = write(tmp_path / "pairs.tsv", "prompt\tresponse\nhello, there\tgeneral\n\nsecond\t\"quoted\ttab\"\n")
    assert records_of(tsv) == [(2, {"prompt": "hello, there", "response": "general"}),
                               (4, {"prompt": "second", "response": "quoted\ttab"})]
    semicolons = write(tmp_path / "semi.csv", "a;b\n1;2\n")
    assert records_of(semicolons, delimiter=";") == [(2, {"a": "1", "b": "2"})]


def test_csv_multiline_fields_report_start_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "qa.csv", (
        "question,answer\r\n"                 # 1
        '"two\r\nlines",short\r\n'            # 2-3
        'plain,"three\nline\nanswer"\n'       # 4-6
        "\n"                                  # 7 blank
        'quote,"say ""hi"""\n'                # 8
        "last,row"                            # 9, no final newline
    ))
    assert records_of(path) == [
        (2, {"question": "two\r\nlines", "answer": "short"}),
        (4, {"question": "plain", "answer": "three\nline\nanswer"}),
        (8, {"question": "quote", "answer": 'say "hi"'}),
        (9, {"question": "last", "answer": "row"}),
    ]


def test_txt_split_modes(tmp_path: Path) -> None:
    path = write(tmp_path / "doc.txt", "\nfirst para\r\nstill first\r\n\r\n  \n\nsecond\n")
    assert records_of(path) == [(2, {"text": "first para"}), (3, {"text": "still first"}), (7, {"text": "second"})]
    assert records_of(path, text_split="paragraph") == [(2, {"text": "first para\nstill first"}),
                                                        (7, {"text": "second"})]
    assert records_of(path, text_split="file") == [(1, {"text": "\nfirst para\nstill first\n\n  \n\nsecond\n"})]
    with pytest.raises(ConfigError, match="text_split"):
        list(read_records(path, text_split="sentence"))


def test_pretty_printed_json_objects(tmp_path: Path) -> None:
    path = write(tmp_path / "objects.json", '{\n  "a": 1\n}\n{\n  "a": 2\n}\n')
    assert records_of(path) == [(1, {"a": 1}), (4, {"a": 2})]


def test_folder_of_department_subfolders(tmp_path: Path) -> None:
    for department, titles in (("内科", ["头痛", "发烧"]), ("外科", ["骨折"])):
        rows = "".join(f"{department},{title}\n" for title in titles)
        write(tmp_path / "data" / department / "part1.csv", "department,title\n" + rows, "gb18030")
        write(tmp_path / "data" / department / "part2.csv", "department,title\n" + rows, "gb18030")
    write(tmp_path / "data" / ".ipynb_checkpoints" / "part1.csv", "department,title\nx,y\n")
    got = [(file.parent.name, file.name, line, record["title"])
           for file, line, record in read_records(tmp_path / "data")]
    assert len(got) == 6
    assert {department for department, *_ in got} == {"内科", "外科"}
    assert [(d, f) for d, f, *_ in got] == sorted((d, f) for d, f, *_ in got)  # folders and files in order
    assert len(list_data_files(tmp_path / "data")) == 4


@pytest.mark.parametrize("name", ["rows.json", "rows.jsonl", "rows.csv", "rows.tsv", "rows.txt"])
def test_gzip_reads_like_plain(tmp_path: Path, name: str) -> None:
    texts = {
        "rows.json": '[\n {"t": "一"},\n {"t": "二"}\n]\n',
        "rows.jsonl": '{"t": "一"}\n\n{"t": "二"}\n',
        "rows.csv": 't,n\n一,"1\n2"\n二,3\n',
        "rows.tsv": "t\tn\n一\t1\n二\t2\n",
        "rows.txt": "一\n\n二\n",
    }
    plain = write(tmp_path / name, texts[name], "gb18030" if name.endswith("csv") else "utf-8")
    packed = gzip_copy(plain, tmp_path / (name + ".gz"))
    assert records_of(packed) == records_of(plain)
    assert len(records_of(packed)) == 2


def test_readers_registry_covers_all_types() -> None:
    assert set(READERS) == {".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt"}


# --- encodings ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-8-sig", "gb18030"])
def test_encodings_detected(tmp_path: Path, codec: str) -> None:
    bom = {"utf-16-be": b"\xfe\xff"}.get(codec, b"")
    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_bytes(bom + '{"q": "你好，世界"}\n{"q": "第二行"}\n'.encode(codec))
    assert records_of(jsonl) == [(1, {"q": "你好，世界"}), (2, {"q": "第二行"})]
    table = tmp_path / "chat.csv"
    table.write_bytes(bom + "问题,回答\r\n高血压患者能吃党参吗？,可以\r\n".encode(codec))
    assert records_of(table) == [(2, {"问题": "高血压患者能吃党参吗？", "回答": "可以"})]  # no BOM in the key


def test_short_gbk_sample_prefers_gb18030() -> None:
    # charset-normalizer alone ranks cp949 (Korean) first for this sample
    assert detect_encoding("你好，世界".encode("gbk"), complete=True) == "gb18030"
    assert detect_encoding("高血压患者能吃党参吗？\n".encode("gbk"), complete=True) == "gb18030"
    assert detect_encoding(b"plain ascii", complete=True) == "utf-8"


def test_explicit_encoding_wins(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("café crème\n".encode("latin-1"))
    assert records_of(path, encoding="latin-1") == [(1, {"text": "café crème"})]
    assert read_text(path, encoding="cp1252") == "café crème\n"


def test_explicit_wrong_encoding_names_file_line_and_key(data_dir: Path, tmp_path: Path) -> None:
    path = data_dir / "medical" / MEDICAL_CSV
    with pytest.raises(DataError, match="not UTF-8 text") as info:
        list(read_records(path, encoding="utf-8"))
    assert info.value.file == str(path) and info.value.line == 2  # the header is ASCII
    assert "'encoding' key" in str(info.value) and "was given" in str(info.value)
    with pytest.raises(DataError, match="unknown encoding 'klingon'"):
        list(read_records(path, encoding="klingon"))


def test_bad_byte_later_in_utf8_file_names_its_line(tmp_path: Path) -> None:
    good = "".join(json.dumps({"text": f"第{i}行中文内容"}, ensure_ascii=False) + "\n" for i in range(5))
    path = tmp_path / "joined.jsonl"
    path.write_bytes(good.encode() + '{"text": "高血压"}\n'.encode("gb18030"))
    seen = []
    with pytest.raises(DataError, match="not UTF-8 text") as info:
        for _, line, _record in read_records(path):
            seen.append(line)
    assert info.value.line == 6


def test_undecodable_binary_raises(tmp_path: Path) -> None:
    path = tmp_path / "noise.txt"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(DataError, match="encoding") as info:
        list(read_records(path))
    assert info.value.file == str(path)


# --- malformed input ----------------------------------------------------------------------------------

def test_truncated_json_array_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "cut.json", '[\n  {"a": 1},\n  {"a": 2},\n  {"a": "never\n')
    seen = []
    with pytest.raises(DataError) as info:
        for _, line, _record in read_records(path):
            seen.append(line)
    assert seen == [2, 3]
    assert info.value.file == str(path) and info.value.line == 4 and "cut.json, line 4" in str(info.value)


@pytest.mark.parametrize(("text", "line", "message"), [
    ('[{"a": 1}\n {"a": 2}]', 2, "expected ',' or ']'"),
    ('[{"a": 1}]\n{"a": 2}', 2, "after the JSON array"),
    ('[\n{"a": 1},\n{"a": nope}]', 3, "not valid JSON"),
])
def test_broken_json_array(tmp_path: Path, text: str, line: int, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        list(read_records(write(tmp_path / "broken.json", text)))
    assert info.value.line == line


def test_bad_jsonl_line_is_invalid_record_and_iteration_continues(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", '{"a": 1}\n\n{"a": 2}\n{"a": 3,\n{"a": 4}\n')
    records = records_of(path)
    assert [line for line, _ in records] == [1, 3, 4, 5]
    bad = records[2][1]
    assert isinstance(bad, InvalidRecord) and bad.reason == "invalid JSON" and "column" in bad.detail
    assert records[3] == (5, {"a": 4})
    error = bad.error(path, 4)
    assert isinstance(error, DataError) and "bad.jsonl, line 4: invalid JSON" in str(error)


def test_csv_wrong_column_count_is_invalid_record(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.csv", "a,b\n1,2\n3,4,5\n6\n7,8\n")
    records = records_of(path)
    assert [line for line, _ in records] == [2, 3, 4, 5]
    assert records[0][1] == {"a": "1", "b": "2"} and records[3][1] == {"a": "7", "b": "8"}
    for _, bad in records[1:3]:
        assert isinstance(bad, InvalidRecord) and bad.reason == "wrong number of CSV columns"
    assert "expected 2 (a, b), got 3" in records[1][1].detail


def test_csv_file_level_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="never closed") as info:
        list(read_records(write(tmp_path / "open.csv", 'a,b\n1,2\n3,"no end\n4,5\n')))
    assert info.value.line == 3
    with pytest.raises(DataError, match="appears twice"):
        list(read_records(write(tmp_path / "dup.csv", "a,a\n1,2\n")))
    assert records_of(write(tmp_path / "header_only.csv", "a,b\n")) == []


@pytest.mark.parametrize("name", ["e.json", "e.jsonl", "e.csv", "e.tsv", "e.txt", "e.parquet", "e.jsonl.gz"])
def test_empty_file_raises(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wb") as packed:
            packed.write(b"\n  \n")
    else:
        path.write_bytes(b"" if name.endswith(".parquet") else b" \r\n\n")
    with pytest.raises(DataError, match="file is empty") as info:
        list(read_records(path))
    assert info.value.file == str(path)


def test_missing_unsupported_and_corrupt(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list(read_records(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        list(read_records(write(tmp_path / "sheet.xlsx", "x")))
    packed = tmp_path / "cut.jsonl.gz"
    packed.write_bytes((data_dir / "hh-rlhf" / "test.jsonl.gz").read_bytes()[:400_000])  # a cut download
    seen = []
    with pytest.raises(DataError, match="cannot read the file") as info:
        for _, line, _record in read_records(packed):
            seen.append(line)
    assert info.value.file == str(packed) and info.value.line > len(seen) > 0


def test_huge_single_line_record(tmp_path: Path) -> None:
    big = "长" * (7 << 20) + "\u2028" + "x" * (6 << 20)  # about 27 MB of UTF-8 on one line
    path = tmp_path / "huge.jsonl"
    with path.open("w", encoding="utf-8") as out:
        out.write('{"i": 0}\n' + json.dumps({"text": big}, ensure_ascii=False) + '\n{"i": 2}\n')
    records = records_of(path)
    assert [line for line, _ in records] == [1, 2, 3] and records[1][1]["text"] == big
    array = tmp_path / "huge.json"
    array.write_text('[{"i": 0},\n' + json.dumps({"text": big}) + ',\n{"i": 2}]', encoding="utf-8")
    assert records_of(array) == records


def test_chunk_boundaries_do_not_matter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunks cut multi-byte characters, escapes, numbers and CRLFs everywhere; results stay the same."""
    values = [{"s": "é\\\"\u2028\U0001f600中", "n": 12345.678e-3}, 1234567, "tail", [True, None]]
    files = {
        "a.json": "[\r\n" + ",\r\n".join(json.dumps(v) for v in values) + "\r\n]",
        "a.jsonl": "\r\n".join(json.dumps(v, ensure_ascii=False) for v in values) + "\r\n{bad\r\n",
        "a.csv": 'k,v\r\n"é\r\n中",1\r\n😀,"a ""b"""\r\n',
        "a.txt": "中文\r\n\r\n😀 x\r\ny\n",
    }
    for name, text in files.items():
        write(tmp_path / name, text, "utf-16" if name == "a.csv" else "utf-8")
    expected = {name: records_of(tmp_path / name, text_split="paragraph") for name in files}
    for size in (1, 2, 3, 5, 7, 16):
        monkeypatch.setattr(encoding_module, "CHUNK_BYTES", size)
        for name in files:
            assert records_of(tmp_path / name, text_split="paragraph") == expected[name], (name, size)
    assert [record for _, record in expected["a.json"]] == values


# --- memory -------------------------------------------------------------------------------------------

# Run in a fresh process and read its own high-water mark: ru_maxrss would inherit the parent's peak
# across fork/exec, so a big pytest process would hide any growth.
_MEASURE = """
import sys
from pathlib import Path
from tunelab.data.readers import InvalidRecord, read_records
def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
before = peak()
count = sum(1 for _, _, r in read_records(Path(sys.argv[1])) if not isinstance(r, InvalidRecord))
print(count, before, peak() - before)
"""


def _write_big(path: Path, target_bytes: int, array: bool) -> int:
    """About ``target_bytes`` of realistic records, written block by block; returns the record count."""
    block = [json.dumps({"instruction": f"Explain item {i}. " + "lorem ipsum " * 40, "output": "中文回答，" * 60},
                        ensure_ascii=False) for i in range(500)]
    separator = ",\n" if array else "\n"
    text = separator.join(block)
    size, count = 0, 0
    with path.open("w", encoding="utf-8") as out:
        out.write("[\n" if array else "")
        while size < target_bytes:
            out.write((separator if count else "") + text)
            size, count = size + len(text.encode()), count + len(block)
        out.write("\n]\n" if array else "\n")
    return count


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from Linux's /proc")
@pytest.mark.parametrize("array", [False, True], ids=["jsonl", "json-array"])
def test_memory_does_not_grow_with_file_size(tmp_path: Path, array: bool) -> None:
    path = tmp_path / ("big.json" if array else "big.jsonl")
    count = _write_big(path, 200 << 20, array)
    size = path.stat().st_size
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, check=True)
    path.unlink()
    read, baseline, growth = map(int, result.stdout.split())
    assert read == count
    print(f"{path.name}: {size / 2**20:.0f} MiB file, peak RSS {baseline / 2**20:.0f} MiB after imports, "
          f"growth while reading {growth / 2**20:.1f} MiB")
    assert size > 200 << 20 and growth < 50 << 20


_MEASURE_CONVERT = """
import sys
from tunelab.commands.convert import convert_dataset
def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
before = peak()
written, skipped = convert_dataset(sys.argv[1], sys.argv[2], stage="sft")
print(written, before, peak() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from Linux's /proc")
def test_convert_to_canonical_jsonl_streams(tmp_path: Path) -> None:
    """`tunelab data convert` on a large JSONL: canonical rows out, memory flat (reader + converter + writer)."""
    source, out = tmp_path / "big.jsonl", tmp_path / "rows.jsonl"
    count = _write_big(source, 120 << 20, array=False)
    result = subprocess.run([sys.executable, "-c", _MEASURE_CONVERT, str(source), str(out)], capture_output=True,
                            text=True, check=True)
    written, _baseline, growth = map(int, result.stdout.splitlines()[-1].split())  # after convert's own report
    assert written == count and out.stat().st_size > 100 << 20
    with out.open(encoding="utf-8") as rows:
        first = json.loads(rows.readline())
    assert first["messages"][0]["role"] == "user" and first["messages"][1]["content"].startswith("中文回答")
    assert growth < 50 << 20

"""prepare(): the bundled default, local archives and folders, downloads from a loopback server, and failures."""
import hashlib
import http.server
import json
import multiprocessing
import socket
import threading
import zipfile
from dataclasses import replace
from functools import partial

import pandas as pd
import pytest
from conftest import ML_100K, require

from lrml.data import (
    ArchiveError,
    ChecksumError,
    DataError,
    DatasetMismatchError,
    DownloadError,
    SplitParams,
    UnknownDatasetError,
    get_release,
    load_dataset,
    prepare,
)
from lrml.data.download import download
from lrml.data.sources import read_archive


@pytest.fixture
def loopback_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/served``."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def ml100k_zip(path, rows: bytes | None = None):
    """A zip laid out like GroupLens's ml-100k.zip, from the real files (or given rating rows)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ml-100k/u.data", rows if rows is not None else require(ML_100K / "u.data").read_bytes())
        archive.writestr("ml-100k/u.item", require(ML_100K / "u.item").read_bytes())
    return path


def release_for(path, url):
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return replace(get_release("ml-100k"), url=url, archive_bytes=path.stat().st_size, archive_sha256=digest)


def test_default_is_the_bundled_small_release():
    dataset = load_dataset(prepare())
    manifest = dataset.manifest
    assert manifest["dataset"] == "ml-latest-small"
    assert manifest["counts"]["interactions"] == 100_836 and manifest["counts"]["users"] == 610
    assert manifest["source"]["ratings_sha256"] == "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646"
    assert dataset.item_titles[0] == "Toy Story (1995)"


def test_archive_and_folder_give_the_same_dataset(tmp_path):
    folder = load_dataset(prepare("ml-100k", require(ML_100K), tmp_path / "from-folder"))
    archive = ml100k_zip(tmp_path / "ml-100k.zip")
    with pytest.raises(ChecksumError, match="expected 4924029"):  # not the official archive
        prepare("ml-100k", archive, tmp_path / "from-zip")
    assert not (tmp_path / "from-zip").exists()
    raw = read_archive(archive, get_release("ml-100k"))
    assert raw.ratings_sha256 == folder.manifest["source"]["ratings_sha256"]


def test_second_call_reuses_and_a_change_is_detected(tmp_path):
    out = tmp_path / "prepared"
    prepare("ml-100k", require(ML_100K), out)
    stamp = (out / "train.parquet").stat().st_mtime_ns
    assert prepare("ml-100k", ML_100K, out) == out
    assert (out / "train.parquet").stat().st_mtime_ns == stamp
    with pytest.raises(DatasetMismatchError, match="min_rating"):
        prepare("ml-100k", ML_100K, out, SplitParams(min_rating=4.0))
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "u.data").write_bytes(ML_100K.joinpath("u.data").read_bytes()[:-200])
    with pytest.raises(DatasetMismatchError, match="ratings_sha256"):
        prepare("ml-100k", edited, out)
    assert (out / "train.parquet").stat().st_mtime_ns == stamp  # nothing lost
    prepare("ml-100k", ML_100K, out, SplitParams(min_rating=4.0), overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["split_params"]["min_rating"] == 4.0


def test_threshold_keeps_only_high_ratings(tmp_path):
    d = load_dataset(prepare("ml-100k", require(ML_100K), tmp_path / "r4", SplitParams(min_rating=4.0)))
    assert d.manifest["counts"]["interactions"] == 34174 + 21201


def test_download_verifies_and_resumes_nothing_partial(tmp_path, loopback_server):
    served, base = loopback_server
    archive = ml100k_zip(served / "ml-100k.zip")
    release = release_for(archive, base + "ml-100k.zip")
    got = download(release, tmp_path / "downloads", progress=False)
    assert got.read_bytes() == archive.read_bytes()
    raw = read_archive(got, release, verified=True)
    assert raw.ratings == ML_100K.joinpath("u.data").read_bytes()

    wrong = replace(release, archive_sha256="0" * 64)
    with pytest.raises(ChecksumError) as error:
        download(wrong, tmp_path / "again", progress=False)
    assert "0" * 64 in str(error.value) and release.archive_sha256 in str(error.value)
    assert [p.name for p in (tmp_path / "again").iterdir()] == ["ml-100k.zip.lock"]  # the partial file is removed


def test_a_download_that_cannot_be_fetched_is_one_line_naming_the_url(tmp_path, loopback_server):
    _, base = loopback_server
    release = release_for(ml100k_zip(tmp_path / "ml-100k.zip"), base + "missing/ml-100k.zip")
    with socket.socket() as probe:  # a loopback port with nothing listening: the connection is refused
        probe.bind(("127.0.0.1", 0))
        closed = replace(release, url=f"http://127.0.0.1:{probe.getsockname()[1]}/ml-100k.zip")
    for unreachable, reason in ((release, "HTTP 404"), (closed, "refused")):
        with pytest.raises(DownloadError) as error:
            download(unreachable, tmp_path / "downloads", progress=False)
        assert unreachable.url in str(error.value) and reason in str(error.value) and "--data-dir" in str(error.value)
        assert "\n" not in str(error.value)
        assert [p.name for p in (tmp_path / "downloads").iterdir()] == ["ml-100k.zip.lock"]  # nothing partial kept


def test_truncated_and_non_zip_archives(tmp_path):
    archive = ml100k_zip(tmp_path / "ml-100k.zip")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    text = tmp_path / "text.zip"
    text.write_text("<html>not found</html>")
    for bad in (truncated, text):
        with pytest.raises(ArchiveError, match="not a valid zip archive"):
            read_archive(bad, get_release("ml-100k"))
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(ArchiveError, match="no ml-100k/u.data inside"):
        read_archive(empty, get_release("ml-100k"))


def test_malformed_source_leaves_no_dataset_folder(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    lines = ML_100K.joinpath("u.data").read_bytes().split(b"\n") if ML_100K.exists() else [b"1\t2\t3\t4"] * 10
    lines[6] = b"196\t242\tthree\t881250949"
    (folder / "u.data").write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"u.data, line 7: rating 'three'"):
        prepare("ml-100k", folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "broken"]  # no staging folder left


def test_unknown_names_and_paths(tmp_path):
    with pytest.raises(UnknownDatasetError, match="'ml-2m'.*ml-100k"):
        prepare("ml-2m")
    with pytest.raises(DataError, match="no such file or folder"):
        prepare("ml-100k", tmp_path / "missing")
    with pytest.raises(DataError, match="no u.data"):
        prepare("ml-100k", tmp_path)
    with pytest.raises(DataError, match="not a prepared dataset"):
        load_dataset(tmp_path)


def test_parquet_layout(tmp_path):
    d = load_dataset(prepare("ml-100k", require(ML_100K), tmp_path / "p"))
    train = pd.read_parquet(d.path / "train.parquet")
    assert str(train["user"].dtype) == "int32" and str(train["item"].dtype) == "int32"
    assert train["user"].max() == 942 and train["item"].max() <= 1681
    users = pd.read_parquet(d.path / "users.parquet")
    assert users["raw_id"].tolist() == list(range(1, 944))


def _prepare_together(out_dir, barrier, paths) -> None:
    barrier.wait()  # all processes start preparing at the same moment
    paths.put(str(prepare(out_dir=out_dir, progress=False)))


def test_processes_preparing_one_folder_at_once_leave_one_good_copy(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier, paths = context.Barrier(3), context.Queue()
    out_dir = tmp_path / "small"
    workers = [context.Process(target=_prepare_together, args=(out_dir, barrier, paths)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert {paths.get(timeout=5) for _ in workers} == {str(out_dir)}
    assert load_dataset(out_dir).manifest["counts"]["train"] == 99_616
    assert sorted(p.name for p in tmp_path.iterdir()) == [".small.lock", "small"]  # no staging or retired copies

"""Parsers on the real MovieLens files, and exact errors on broken lines."""
import pytest
from conftest import ML_100K, ML_LATEST_SMALL, SHARED_DATA, require

from lrml.data import ParseError
from lrml.data.parsers import parse_ratings, parse_titles


def test_udata_real_file():
    frame = parse_ratings(require(ML_100K / "u.data").read_bytes(), "udata", "u.data")
    assert len(frame) == 100_000
    assert frame["user"].nunique() == 943 and frame["item"].nunique() == 1682
    assert frame.iloc[0].tolist() == [196, 242, 3.0, 881250949]
    assert frame["rating"].value_counts().to_dict() == {4.0: 34174, 3.0: 27145, 5.0: 21201, 2.0: 11370, 1.0: 6110}


def test_csv_real_file_crlf_and_lf_agree():
    data = require(ML_LATEST_SMALL / "ratings.csv").read_bytes()
    assert b"\r\n" in data
    crlf = parse_ratings(data, "csv", "ratings.csv")
    lf = parse_ratings(data.replace(b"\r\n", b"\n"), "csv", "ratings.csv")
    assert len(crlf) == 100_836 and crlf["user"].nunique() == 610 and crlf["item"].nunique() == 9724
    assert crlf.equals(lf)
    assert crlf["rating"].min() == 0.5 and (crlf["rating"] == 0.5).sum() == 1370


def test_dat_format():
    data = b"1::1193::5::978300760\n1::661::3::978302109\n"
    frame = parse_ratings(data, "dat", "ratings.dat")
    assert frame.values.tolist() == [[1, 1193, 5, 978300760], [1, 661, 3, 978302109]]


def test_titles_of_all_three_formats():
    assert parse_titles(require(ML_100K / "u.item").read_bytes(), "udata").iloc[0].tolist() == [1, "Toy Story (1995)"]
    movies = parse_titles(require(ML_LATEST_SMALL / "movies.csv").read_bytes(), "csv")
    assert len(movies) == 9742 and movies.iloc[1].tolist() == [2, "Jumanji (1995)"]
    dat = parse_titles(require(SHARED_DATA / "ml-1m-partial" / "movies.dat").read_bytes(), "dat")
    assert len(dat) == 3883 and dat.iloc[0].tolist() == [1, "Toy Story (1995)"]


@pytest.mark.parametrize("fmt, data, line, fragment", [
    ("udata", b"1\t2\t3\t4\n5\t6\tx\t8\n", 2, "rating 'x' is not a number"),
    ("udata", b"1\t2\t3\t4\n\n5\t6\t7\n", 3, "expected 4 fields"),
    ("dat", b"1::2::3::4\n1::2::3::4::5\n", 2, "found 5"),
    ("csv", b"userId,movieId,rating,timestamp\r\n1,2,3.5,4\r\n1,2,3.5\r\n", 3, "expected 4 fields"),
    ("csv", b"user,item\n1,2\n", 1, "expected header"),
])
def test_malformed_line_names_file_and_line(fmt, data, line, fragment):
    with pytest.raises(ParseError) as error:
        parse_ratings(data, fmt, "ratings-file")
    assert f"ratings-file, line {line}" in str(error.value) and fragment in str(error.value)

import logging
import pickle
import zlib

import pytest

from fleche_redis.storage.codec import Codec, UndecodableEntry


def test_round_trip_plain_and_compressed():
    for codec in (
        Codec(),
        Codec(compress=True),
        Codec("pickle"),
        Codec(secret_key=(b"k",), compress=True),
    ):
        assert codec.decode(codec.encode({"a": [1, 2]})) == {"a": [1, 2]}


def test_compressed_output_is_zlib_and_smaller():
    data = Codec(compress=True).encode("x" * 10_000)
    assert zlib.decompress(data) and len(data) < 1_000


def test_cloudpickle_serializes_local_functions():
    codec = Codec("cloudpickle")
    f = codec.decode(codec.encode(lambda x: x + 1))
    assert f(1) == 2


def test_unknown_serializer():
    with pytest.raises(ValueError, match="unknown serializer 'yaml'"):
        Codec("yaml")


def test_signed_entry_has_fleche_pickle_file_layout():
    """Same bytes as fleche's ValuePickleFile writes: pickle, then 64 hex chars of HMAC."""
    from fleche.security import SignedBytes

    codec = Codec("pickle", secret_key=(b"key",))
    data = codec.encode([1, 2])
    assert SignedBytes([b"key"]).loads(data) == data[:-64]
    assert pickle.loads(data[:-64]) == [1, 2]


def test_unsigned_data_refused_when_a_key_is_set(caplog):
    with caplog.at_level(logging.WARNING, logger="fleche_redis.codec"):
        with pytest.raises(UndecodableEntry):
            Codec(secret_key=(b"k",)).decode(pickle.dumps("x"), key="abc")
    assert "abc" in caplog.text and "signature" in caplog.text


def test_corrupt_compressed_data_is_a_miss():
    with pytest.raises(UndecodableEntry):
        Codec().decode(b"\x78\x9cnot zlib")


def test_signature_checked_before_decompressed_payload_is_unpickled(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    planted = zlib.compress(pickle.dumps(Exploit()) + b"0" * 64)
    with pytest.raises(UndecodableEntry):
        Codec(secret_key=(b"k",)).decode(planted)
    assert not marker.exists()


@pytest.mark.parametrize("algorithm", ["zlib", "zstd", "lz4", True])
def test_every_compressor_round_trips_and_is_detected(algorithm):
    writer = Codec(compress=algorithm)
    data = writer.encode("y" * 5000)
    assert len(data) < 1000
    assert Codec().decode(data) == "y" * 5000  # a reader with compression off reads it too


def test_small_entries_stay_uncompressed():
    codec = Codec(compress="zstd", compress_min_size=512)
    assert codec.encode("tiny")[:1] == b"\x80"
    assert codec.encode("z" * 600)[:4] == b"\x28\xb5\x2f\xfd"


def test_unknown_compression_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown compression 'brotli'"):
        Codec(compress="brotli")

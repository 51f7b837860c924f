import logging
import pickle
import pickletools
import zlib

import numpy as np
import pytest
from fleche.security import SignedBytes

from fleche_redis.storage import chunks
from fleche_redis.storage.codec import FRAMED, Codec, UndecodableEntry
from fleche_redis.storage.formats import available
from fleche_redis.transport.gather import Gather


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


# -- framed entries (pickle protocol 5, out-of-band buffers) and the old format --

SERIALIZER_NAMES = ["pickle", "cloudpickle", "dill"]
KEYS = [(), (b"key",)]


def _codec(serializer, secret_key=(), **options):
    if serializer == "dill":
        pytest.importorskip("dill")
    return Codec(serializer, secret_key=secret_key, **options)


def _array(n=100_000):
    return np.arange(n, dtype=np.float64)


@pytest.mark.parametrize("serializer", SERIALIZER_NAMES)
@pytest.mark.parametrize("secret_key", KEYS)
def test_a_value_with_big_buffers_is_framed_and_round_trips(serializer, secret_key):
    codec = _codec(serializer, secret_key)
    value = {"a": _array(), "b": np.ones((300, 200), order="F"), "label": "x"}
    data = codec.encode(value)
    if serializer != "dill":  # dill pickles arrays with a reducer of its own, in the stream
        assert isinstance(data, Gather) and bytes(data)[:2] == FRAMED
    assert len(data) > value["a"].nbytes + value["b"].nbytes
    back = codec.decode(bytes(data))
    assert np.array_equal(back["a"], value["a"]) and np.array_equal(back["b"], value["b"])
    assert back["b"].flags.f_contiguous and back["label"] == "x"
    # Arrays come back as writable as they went in: a caller may change them in place.
    assert back["a"].flags.writeable and back["b"].flags.writeable


def test_the_array_memory_is_sent_not_copied():
    value = _array()
    data = Codec().encode(value)
    assert isinstance(data, Gather)
    assert any(np.shares_memory(np.frombuffer(part, np.uint8), value) for part in data.parts)


def test_read_only_buffers_are_views_into_the_received_bytes():
    value = _array()
    value.flags.writeable = False
    data = bytes(Codec().encode(value))
    back = Codec().decode(data)
    assert not back.flags.writeable and np.array_equal(back, value)
    assert np.shares_memory(back, np.frombuffer(data, np.uint8))  # no copy made


def test_a_writable_received_buffer_is_used_as_it_is():
    value = _array()
    data = bytearray(bytes(Codec().encode(value)))  # as chunks.read returns it
    back = Codec().decode(data)
    assert back.flags.writeable and np.shares_memory(back, np.frombuffer(data, np.uint8))


@pytest.mark.parametrize("serializer", SERIALIZER_NAMES)
@pytest.mark.parametrize("secret_key", KEYS)
@pytest.mark.parametrize("compress", [False, "zlib"])
@pytest.mark.parametrize("value", ["small", "array"])
def test_entries_written_in_the_old_format_still_decode(serializer, secret_key, compress, value):
    """The bytes fleche-redis wrote before framed entries: compressed?(pickle + hex signature?)."""
    codec = _codec(serializer, secret_key)
    obj = {"n": 1} if value == "small" else _array()
    if serializer == "dill":
        import dill

        stream = dill.dumps(obj)
    else:
        stream = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    old = SignedBytes(list(secret_key)).dumps(stream)
    if compress:
        old = zlib.compress(old, 1)
    back = codec.decode(old)
    if value == "small":
        assert back == obj
    else:
        assert np.array_equal(back, obj) and back.flags.writeable


@pytest.mark.parametrize("serializer", SERIALIZER_NAMES)
@pytest.mark.parametrize("secret_key", KEYS)
def test_values_without_big_buffers_keep_fleche_s_pickle_file_bytes(serializer, secret_key):
    """Readable by fleche's own ValuePickleFile reader (and by older fleche-redis): nothing changed."""
    codec = _codec(serializer, secret_key)
    for value in ({"a": [1, 2]}, np.arange(10.0), b"b" * 200_000):
        data = bytes(codec.encode(value))
        assert data[:1] == b"\x80"
        payload = SignedBytes(list(secret_key)).loads(data)
        loaded = pickle.loads(payload)
        assert np.array_equal(loaded, value) if isinstance(value, np.ndarray) else loaded == value


def test_a_big_signed_stream_is_sent_with_its_signature_beside_it():
    codec = Codec("pickle", secret_key=(b"key",))
    value = b"b" * 200_000
    data = codec.encode(value)
    assert isinstance(data, Gather) and len(data.parts) == 2
    assert bytes(data) == SignedBytes([b"key"]).dumps(pickle.dumps(value, protocol=5))
    assert codec.decode(bytes(data)) == value


def test_compressed_entries_keep_the_old_format():
    codec = Codec(compress="zlib")
    data = codec.encode(_array())
    assert isinstance(data, bytes) and data[:1] == b"\x78"
    assert np.array_equal(Codec().decode(data), _array())


def test_the_marker_collides_with_no_other_first_byte():
    marker = FRAMED[:1]
    starts = {b"\x80", chunks.MAGIC[:1]} | {m[:1] for c in available() for m in c.magic}
    assert marker not in starts
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.dumps({"a": 1}, protocol=protocol)[:1] != marker
    assert marker[0] not in {op.code.encode("latin-1")[0] for op in pickletools.opcodes}


def test_a_framed_entry_is_a_miss_for_a_reader_of_the_old_format():
    """An older fleche-redis (or fleche's pickle reader) refuses it: it never means something else."""
    data = bytes(Codec().encode(_array()))
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)


@pytest.mark.parametrize("where", ["head", "stream", "buffer", "signature"])
def test_a_tampered_framed_entry_is_never_unpickled(where):
    codec = Codec("pickle", secret_key=(b"key",))
    data = bytearray(bytes(codec.encode(_array())))
    at = {"head": 3, "stream": 40, "buffer": len(data) // 2, "signature": len(data) - 1}[where]
    data[at] ^= 0x01
    loaded = []
    object.__setattr__(codec, "loads", lambda *a: loaded.append(a))
    with pytest.raises(UndecodableEntry):
        codec.decode(bytes(data))
    assert not loaded


def test_an_unsigned_framed_entry_is_refused_when_a_key_is_set(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __init__(self):
            self.payload = np.zeros(100_000)

        def __reduce__(self):
            return (open, (str(marker), "w"))

    planted = bytes(Codec("pickle").encode({"x": Exploit(), "y": _array()}))
    assert planted[:2] == FRAMED
    with pytest.raises(UndecodableEntry):
        Codec("pickle", secret_key=(b"k",)).decode(planted)
    signed_elsewhere = bytes(Codec("pickle", secret_key=(b"other",)).encode(_array()))
    with pytest.raises(UndecodableEntry):
        Codec("pickle", secret_key=(b"k",)).decode(signed_elsewhere)
    assert not marker.exists()


def test_framed_entries_follow_key_rotation():
    old = bytes(Codec(secret_key=(b"old",)).encode(_array()))
    assert np.array_equal(Codec(secret_key=(b"new", b"old")).decode(old), _array())


def test_a_signed_framed_entry_reads_without_a_key_as_fleche_s_format_does():
    data = bytes(Codec(secret_key=(b"k",)).encode(_array()))
    assert np.array_equal(Codec().decode(data), _array())


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:10],  # truncated head
        lambda d: d[:-5],  # truncated body
        lambda d: d + b"x",  # trailing bytes
        lambda d: FRAMED[:1] + b"\x09" + d[2:],  # a version this reader does not know
        lambda d: d[:7] + b"\xff" * 4 + d[11:],  # absurd buffer count
    ],
)
def test_a_corrupt_framed_entry_is_a_logged_miss(damage, caplog):
    data = bytes(Codec().encode(_array()))
    with caplog.at_level(logging.WARNING, logger="fleche_redis.codec"):
        with pytest.raises(UndecodableEntry):
            Codec().decode(damage(data), key="k1")
    assert "k1" in caplog.text


def test_small_buffers_stay_in_the_stream():
    data = Codec().encode([np.arange(100.0)] * 3)
    assert isinstance(data, bytes) and data[:1] == b"\x80"


def test_gather_slices_share_memory_and_cover_every_byte():
    parts = [b"ab", bytearray(b"cdefg"), memoryview(b"hij")]
    whole = Gather(parts)
    assert len(whole) == 10 and bytes(whole) == b"abcdefghij"
    pieces = list(whole.slices(4))
    assert [bytes(p) for p in pieces] == [b"abcd", b"efgh", b"ij"]
    assert [len(p) for p in pieces] == [4, 4, 2]


@pytest.mark.parametrize("serializer", SERIALIZER_NAMES)
def test_every_serializer_frames_protocol_5_buffers(serializer):
    codec = _codec(serializer, (b"k",))
    value = pickle.PickleBuffer(bytearray(b"z" * 200_000))
    data = codec.encode(value)
    assert isinstance(data, Gather) and bytes(data)[:2] == FRAMED
    assert codec.decode(bytes(data)) == bytearray(b"z" * 200_000)


def test_a_value_cloudpickle_must_write_keeps_its_buffers_out_of_band():
    """The C pickler's attempt fails on the lambda: only cloudpickle's buffers make the entry."""
    codec = Codec("cloudpickle")
    value = {"f": lambda v: v + 1, "a": _array()}
    data = codec.encode(value)
    assert isinstance(data, Gather) and bytes(data)[:2] == FRAMED
    assert sum(p.nbytes for p in data.parts) < value["a"].nbytes + 10_000  # one copy of the array
    back = codec.decode(bytes(data))
    assert back["f"](1) == 2 and np.array_equal(back["a"], value["a"])


# -- re-signing after a rotation: the signature changes, nothing is unpickled --


def _entry_bytes(data):
    return bytes(data) if isinstance(data, Gather) else data


@pytest.mark.parametrize(
    "value, options",
    [({"a": [1, 2]}, {}), ("z" * 5000, {"compress": "zlib"}), (None, {})],
    ids=["plain", "compressed", "framed"],
)
def test_an_old_key_s_entry_is_resigned_with_the_first_key(value, options):
    value = _array() if value is None else value
    old = _entry_bytes(Codec(secret_key=(b"old",), **options).encode(value))
    rotating = Codec(secret_key=(b"new", b"old"), **options)
    assert rotating.signed_by(old) == 1
    fresh = rotating.resigned(old)
    assert rotating.signed_by(fresh) == 0 and rotating.resigned(fresh) is None
    back = Codec(secret_key=(b"new",)).decode(fresh)
    assert np.array_equal(back, value) if isinstance(value, np.ndarray) else back == value
    if options:
        assert zlib.decompress(fresh)  # compressed again, by the same compressor
    with pytest.raises(UndecodableEntry):
        Codec(secret_key=(b"old",)).decode(fresh)


def test_resigning_never_unpickles_and_refuses_what_no_key_verifies(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    rotating = Codec("pickle", secret_key=(b"new", b"old"))
    signed = SignedBytes([b"old"]).dumps(pickle.dumps(Exploit()))
    assert rotating.resigned(signed) is not None  # its stream is kept as it is, not loaded
    for planted in (pickle.dumps(Exploit()) + b"0" * 64, SignedBytes([b"x"]).dumps(b"\x80.")):
        with pytest.raises(UndecodableEntry):
            rotating.resigned(planted)
        with pytest.raises(UndecodableEntry):
            rotating.signed_by(planted)
    assert not marker.exists()


def test_a_codec_without_keys_signs_nothing():
    assert Codec().resigned(Codec().encode(1)) is None and Codec().signed_by(b"") == 0

from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from aosk.partitioning import murmur2, partition_for


def test_matches_aiokafka_for_many_keys() -> None:
    for i in range(10_000):
        key = f"agent-{i}-{'x' * (i % 7)}".encode()
        # aiokafka returns the same 32 bits unsigned; what matters is the partition.
        assert murmur2(key) & 0xFFFFFFFF == aiokafka_murmur2(key), key
        assert partition_for(key, 12) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % 12


def test_known_java_values() -> None:
    # Values of org.apache.kafka.common.utils.Utils.murmur2 (Kafka's own UtilsTest).
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(b"abc") == 479470107


def test_partition_is_in_range() -> None:
    assert {partition_for(f"k{i}", 12) for i in range(1000)} == set(range(12))

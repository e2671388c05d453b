import pytest

from omnispectra.flags import FROZEN_FLAG_VALUES, Flag, describe, flag_from_names, flag_names

# Written out again on purpose: a catalogue written today must decode the same way forever.
PUBLISHED = {
    "BAD_INPUT": 1, "OUTSIDE_SUPPORT": 2, "FEW_TOKENS": 4, "LOW_SN": 8, "ANOMALY": 16,
    "DISAGREEMENT": 32, "Z_EDGE": 64, "SMALL_DELTACHI2": 128, "NEGATIVE_MODEL": 256,
    "NOT_STAR": 512, "WRONG_CLASS": 1024, "IMPOSSIBLE_VALUE": 2048, "NONFINITE": 4096,
    "LITTLE_COVERAGE": 8192, "BAD_MINFIT": 16384, "OUT_OF_DOMAIN": 32768, "POOR_FIT": 65536,
}


def test_values_are_frozen():
    assert FROZEN_FLAG_VALUES == PUBLISHED
    assert {m.name: int(m) for m in Flag} == PUBLISHED


def test_bits_are_single_and_distinct():
    values = [int(m) for m in Flag]
    assert len(set(values)) == len(values)
    assert all(v & (v - 1) == 0 for v in values)


def test_every_bit_is_documented():
    import omnispectra.flags as mod

    for name in PUBLISHED:
        assert f"``{name}``" in mod.__doc__


@pytest.mark.parametrize("value, text", [(0, "OK"), (64, "Z_EDGE"), (64 | 128, "Z_EDGE|SMALL_DELTACHI2"),
                                         (1 | 4096, "BAD_INPUT|NONFINITE")],
                         ids=["zero", "one", "two", "ends"])
def test_describe(value, text):
    assert describe(value) == text
    assert int(flag_from_names(text)) == value


def test_names_round_trip_all():
    every = sum(PUBLISHED.values())
    assert flag_names(every) == list(PUBLISHED)
    assert int(flag_from_names(flag_names(every))) == every
    assert flag_from_names("z_edge, low_sn") == Flag.Z_EDGE | Flag.LOW_SN


@pytest.mark.parametrize("bad", [-1, 1 << 30], ids=["negative", "undefined-bit"])
def test_bad_values_raise(bad):
    with pytest.raises(ValueError):
        flag_names(bad)


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="unknown flag name"):
        flag_from_names("NOT_A_FLAG")


def test_disagreement_only_where_the_templates_could_test_the_class():
    from omnispectra.flags import Flag, redshift_class_flags

    chosen, fit = ["STAR", "STAR", "GALAXY", "QSO"], ["GALAXY", "GALAXY", "GALAXY", ""]
    plain = redshift_class_flags(chosen, fit, fit)
    assert plain.tolist() == [int(Flag.DISAGREEMENT), int(Flag.DISAGREEMENT), 0, 0]
    # the second STAR's templates did not cover its spectrum (e.g. H band): nothing contradicts it
    tested = redshift_class_flags(chosen, fit, fit, tested=[True, False, True, True])
    assert tested.tolist() == [int(Flag.DISAGREEMENT), 0, 0, 0]
    assert (redshift_class_flags(chosen, fit, ["STAR"] * 4, tested=[False] * 4)
            == int(Flag.WRONG_CLASS)).all()

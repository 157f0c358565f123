import numpy as np
import pandas as pd
import pytest

from qlib import results


def test_span_prints_both_ends_in_order():
    assert results.span([4.31, 4.12, 4.25]) == "4.1-4.3"
    assert results.span(np.array([-0.13, -0.33]), "{:+.2f}", " to ") == "-0.33 to -0.13"
    assert results.span(pd.Series([0.07, -0.26]), "{:+.0%}", " to ") == "-26% to +7%"


def test_span_prints_one_value_where_both_ends_print_alike():
    assert results.span([4.71, 4.69]) == "4.7"
    assert results.span([3], "{:+d}", " to ") == "+3"


def test_span_prints_a_negative_value_that_rounds_to_zero_as_zero():
    # chapter 08 printed "a cold batch takes -0% to +7% longer"
    assert results.span([-0.004, 0.07], "{:+.0%}", " to ") == "+0% to +7%"
    assert results.span([-0.004, 0.004], "{:.1f}") == "0.0"
    assert results.span([-0.006, 0.07], "{:+.1%}", " to ") == "-0.6% to +7.0%"


def test_span_drops_the_minus_of_zero_whatever_the_format_prints_around_it():
    assert results.span([-0.3], "{:+.0f} images") == "+0 images"
    assert results.span([np.float32(-0.001), 0.2], "Δ {:.1f}", " to ") == "Δ 0.0 to Δ 0.2"
    assert results.span([-0.3, 1.2], "{:+.0f} images", " to ") == "+0 images to +1 images"
    # the same rule as Python's own "z" option (PEP 682), which the chapters use for one number
    assert results.span([-0.004], "{:+.0%}") == f"{-0.004:+z.0%}"
    assert results.span([-0, 2], "{:+d}", " to ") == "+0 to +2"


def test_span_of_nothing_is_a_clear_error():
    with pytest.raises(ValueError, match="no values"):
        results.span([])

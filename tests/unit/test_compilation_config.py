"""``compilation_config``: vLLM's keys and cudagraph modes, and clear errors for the rest."""

from __future__ import annotations

import pytest

from pagellm.config.compilation import CUDAGRAPH_MODES, parse_compilation_config
from pagellm.config.engine_args import create_engine_config
from pagellm.errors import ClientError


@pytest.mark.parametrize("mode,decode,mixed", [
    ("NONE", False, False), ("FULL_DECODE_ONLY", True, False), ("FULL", True, True),
    ("FULL_AND_PIECEWISE", True, True), ("PIECEWISE", True, True),
    ("full_decode_only", True, False)])
def test_each_cudagraph_mode_maps_to_the_graphs_built(mode, decode, mixed):
    options = parse_compilation_config({"cudagraph_mode": mode})
    assert options.cudagraph_mode == mode.upper()
    assert (options.decode_graphs, options.mixed_graphs) == (decode, mixed)


def test_defaults_and_sizes():
    options = parse_compilation_config(None)
    assert options.cudagraph_mode == "FULL_AND_PIECEWISE" and options.mixed_graphs
    assert options.cudagraph_capture_sizes is None and options.max_cudagraph_capture_size is None
    given = parse_compilation_config({"cudagraph_capture_sizes": [8, 2, 8, 1],
                                      "max_cudagraph_capture_size": 8, "level": 3})
    assert given.cudagraph_capture_sizes == (1, 2, 8) and given.max_cudagraph_capture_size == 8
    config = create_engine_config(model="m", compilation_config={"cudagraph_mode": "FULL"})
    assert config.compilation.cuda_graph_options.cudagraph_mode == "FULL"
    # vLLM's other spellings: a JSON object string, an int optimization level
    as_json = parse_compilation_config('{"cudagraph_mode": "none"}')
    assert as_json.cudagraph_mode == "NONE" and not as_json.decode_graphs
    assert parse_compilation_config(3) == parse_compilation_config({"level": 3})
    assert parse_compilation_config(0).cudagraph_mode == "FULL_AND_PIECEWISE"


@pytest.mark.parametrize("options,names", [
    ({"use_cudagraph": True}, "unknown key(s) ['use_cudagraph']"),
    ({"cudagraph_mode": "HALF"}, f"cudagraph_mode must be one of {list(CUDAGRAPH_MODES)}"),
    ({"cudagraph_mode": 2}, "cudagraph_mode must be one of"),
    ({"cudagraph_capture_sizes": [1, 0]}, "cudagraph_capture_sizes must be"),
    ({"cudagraph_capture_sizes": []}, "cudagraph_capture_sizes must be"),
    ({"cudagraph_capture_sizes": [1, True]}, "cudagraph_capture_sizes must be"),
    ({"max_cudagraph_capture_size": 0}, "max_cudagraph_capture_size must be"),
    ({"cudagraph_capture_sizes": [1, 4], "max_cudagraph_capture_size": 8},
     "max_cudagraph_capture_size=8 must equal the largest"),
    ({"level": 7}, "level must be one of"),
    ({"mode": "FAST"}, "mode must be one of"),
    ('cudagraph_mode=NONE', "expected a JSON object"),
    ('[1, 2]', "expected a dict"),
    ([1, 2], "expected a dict"),
    ("", "expected a JSON object"),
    (True, "expected a dict"),
    (9, "level must be one of"),
])
def test_bad_options_are_client_errors_naming_the_key(options, names):
    with pytest.raises(ClientError, match="compilation_config") as error:
        create_engine_config(model="m", compilation_config=options)
    assert names in str(error.value) and error.value.param == "compilation_config"

"""The catalog of simulated models served by `farebox sim`, used by the demo, the tests
and the benchmarks. Prices are chosen to look like real ones."""

from __future__ import annotations

SIM_MODELS = ("sim/small", "sim/large", "sim/small:free")


def sim_catalog(base_url: str, provider: str = "sim", name: str = "Farebox Simulator") -> str:
    """Catalog TOML for the simulator at `base_url` (e.g. http://127.0.0.1:8090/v1)."""
    params = ('["max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", '
              '"response_format", "tools", "tool_choice", "frequency_penalty", "presence_penalty"]')
    return f'''
[providers.{provider}]
name = "{name}"
dialect = "openai"
base_url = "{base_url}"
api_key = "none"
trains_on_prompts = false
retains_prompts = false

[[models]]
id = "sim/small"
name = "Simulated: Small"
description = "A fast simulated model priced like a small frontier model."
created = 1767225600
context_length = 128000
tokenizer = "Other"

[[models.endpoints]]
provider = "{provider}"
model = "sim-small"
max_completion_tokens = 16384
supported_parameters = {params}
pricing = {{ prompt = "0.00000015", completion = "0.0000006", input_cache_read = "0.000000075" }}

[[models]]
id = "sim/large"
name = "Simulated: Large"
description = "A simulated model priced like a large frontier model."
created = 1767225600
context_length = 200000
tokenizer = "Other"

[[models.endpoints]]
provider = "{provider}"
model = "sim-large"
max_completion_tokens = 64000
supported_parameters = {params}
pricing = {{ prompt = "0.000003", completion = "0.000015", input_cache_read = "0.0000003", input_cache_write = "0.00000375" }}

[[models]]
id = "sim/small:free"
name = "Simulated: Small (free)"
description = "The small simulated model at no cost."
created = 1767225600
context_length = 128000
tokenizer = "Other"

[[models.endpoints]]
provider = "{provider}"
model = "sim-small"
max_completion_tokens = 16384
supported_parameters = {params}
pricing = {{ prompt = "0", completion = "0" }}
'''

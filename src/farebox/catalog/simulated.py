"""The catalog of simulated models served by `farebox sim`, used by the demo, the tests
and the benchmarks. Prices are chosen to look like real ones."""

from __future__ import annotations

# Chat models: sim/claude and sim/gemini are served through the simulator's Anthropic and
# Gemini dialects, so a demo (and the tests) cross every translation the gateway has.
SIM_MODELS = ("sim/small", "sim/large", "sim/small:free", "sim/claude", "sim/gemini", "sim/open")
SIM_EMBEDDING_MODELS = ("sim/embed",)


def sim_catalog(base_url: str, provider: str = "sim", name: str = "Farebox Simulator") -> str:
    """Catalog TOML for the simulator at `base_url` (e.g. http://127.0.0.1:8090/v1): one
    provider per dialect the simulator speaks, at the paths the real APIs use, and
    `sim/open`, an open-weights-style model served by four simulated providers that differ in
    price, speed, context, quantization, data policy and reliability (each provider's
    behaviour is fixed by its base URL's `/_sim/...` prefix)."""
    root = base_url.removesuffix("/v1")
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

[providers.{provider}-anthropic]
name = "{name} (Anthropic)"
dialect = "anthropic"
base_url = "{root}"
api_key = "none"
trains_on_prompts = false
retains_prompts = false

[providers.{provider}-google]
name = "{name} (Gemini)"
dialect = "gemini"
base_url = "{root}/v1beta"
api_key = "none"
trains_on_prompts = false
retains_prompts = false

[providers.{provider}-budget]
name = "{name} (Budget)"
dialect = "openai"
base_url = "{root}/_sim/ttft_ms=120,tokens_per_s=400/v1"
api_key = "none"
trains_on_prompts = true
retains_prompts = true

[providers.{provider}-fast]
name = "{name} (Fast)"
dialect = "openai"
base_url = "{root}/v1"
api_key = "none"
trains_on_prompts = false
retains_prompts = false

[providers.{provider}-flaky]
name = "{name} (Flaky)"
dialect = "openai"
base_url = "{root}/_sim/fail_rate=0.5/v1"
api_key = "none"
trains_on_prompts = false
retains_prompts = true

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

[[models]]
id = "sim/embed"
name = "Simulated: Embeddings"
description = "A simulated text embedding model priced like a small one."
created = 1767225600
context_length = 8192
input_modalities = ["text"]
output_modalities = ["embeddings"]
tokenizer = "Other"

[[models.endpoints]]
provider = "{provider}"
model = "sim-embed"
pricing = {{ prompt = "0.00000002", completion = "0" }}

[[models]]
id = "sim/claude"
name = "Simulated: Claude-style"
description = "A simulated model behind the Anthropic Messages API, priced like a mid-size Claude."
created = 1767225600
context_length = 200000
input_modalities = ["text", "image", "file"]
tokenizer = "Claude"

[[models.endpoints]]
provider = "{provider}-anthropic"
model = "sim-claude"
max_completion_tokens = 64000
supported_parameters = {params}
pricing = {{ prompt = "0.000003", completion = "0.000015", input_cache_read = "0.0000003", input_cache_write = "0.00000375" }}

[[models]]
id = "sim/claude:thinking"
name = "Simulated: Claude-style (thinking)"
description = "A static variant of sim/claude with extended thinking on by default."
created = 1767225600
context_length = 200000
input_modalities = ["text", "image", "file"]
tokenizer = "Claude"
default_parameters = {{ reasoning = {{ max_tokens = 2048 }} }}

[[models.endpoints]]
provider = "{provider}-anthropic"
model = "sim-claude"
max_completion_tokens = 64000
supported_parameters = {params}
pricing = {{ prompt = "0.000003", completion = "0.000015", input_cache_read = "0.0000003", input_cache_write = "0.00000375" }}

[[models]]
id = "sim/gemini"
name = "Simulated: Gemini-style"
description = "A simulated model behind the Gemini API, priced like a Flash model."
created = 1767225600
context_length = 1000000
input_modalities = ["text", "image", "file", "audio"]
tokenizer = "Gemini"

[[models.endpoints]]
provider = "{provider}-google"
model = "sim-gemini"
max_completion_tokens = 65536
supported_parameters = {params}
pricing = {{ prompt = "0.0000003", completion = "0.0000025", input_cache_read = "0.00000003" }}

[[models]]
id = "sim/open"
name = "Simulated: Open-weights model"
description = "One model, four simulated providers: Budget (cheapest, slow, int8, 32K, trains on prompts), Flaky (fails half its requests), the main simulator (fp8), and Fast (dearest, bf16, zero retention)."
created = 1767225600
context_length = 131072
tokenizer = "Llama3"

[[models.endpoints]]
provider = "{provider}-budget"
model = "sim-open"
context_length = 32768
max_completion_tokens = 8192
quantization = "int8"
supported_parameters = ["max_tokens", "temperature", "top_p", "stop", "seed"]
pricing = {{ prompt = "0.0000001", completion = "0.0000004" }}

[[models.endpoints]]
provider = "{provider}-flaky"
model = "sim-open"
context_length = 65536
max_completion_tokens = 16384
quantization = "fp8"
supported_parameters = {params}
pricing = {{ prompt = "0.00000015", completion = "0.0000006" }}

[[models.endpoints]]
provider = "{provider}"
model = "sim-open"
max_completion_tokens = 16384
quantization = "fp8"
supported_parameters = {params}
pricing = {{ prompt = "0.0000002", completion = "0.0000008", input_cache_read = "0.00000005" }}

[[models.endpoints]]
provider = "{provider}-fast"
model = "sim-open"
max_completion_tokens = 32768
quantization = "bf16"
supported_parameters = {params}
pricing = {{ prompt = "0.0000006", completion = "0.0000024", input_cache_read = "0.00000015" }}
'''

"""An inspect_ai model provider for every valign model spec: ``valign/<spec>``.

``inspect eval … --model valign/embedded`` (or ``valign/run:runs/kantian-demo/06-dpo``,
``valign/hf:…``, ``valign/openai:…@…``) runs inspect's solvers on a valign model. It is
registered through inspect_ai's ``modelapi`` decorator and the ``inspect_ai`` entry
point in valign's ``pyproject.toml``, so inspect finds it without an import;
importing `valign.evals.inspect_tasks` registers it too.

inspect runs samples concurrently (``max_connections``, 32 by default here); their
requests go through one `valign.serve.Batcher`, which runs whatever is waiting as a
single batched model call on one worker thread, so a local model is never called
from two threads at once and a CPU gets batches rather than single requests.

Example (in an async function; loads the embedded model)::

    from inspect_ai.model import GenerateConfig, get_model
    import valign.evals.inspect_provider
    output = await get_model("valign/embedded").generate("Say hello", config=GenerateConfig(max_tokens=8))
"""

from __future__ import annotations

from typing import Any

from inspect_ai.model import ModelAPI, modelapi

__all__ = ["valign_provider"]


@modelapi(name="valign")
def valign_provider() -> type[ModelAPI]:
    """The provider class, imported only when inspect asks for a ``valign/`` model.

    Example (any valign spec after valign/)::

        get_model("valign/run:runs/kantian-demo/06-dpo")  # any valign spec after "valign/"
    """
    return _provider_class()


def _provider_class() -> type[ModelAPI]:
    import asyncio

    from inspect_ai.model import ChatMessage, GenerateConfig, ModelOutput, ModelUsage
    from inspect_ai.tool import ToolChoice, ToolInfo

    from valign.types import GenConfig

    class ValignModelAPI(ModelAPI):
        """Serves any valign model spec to inspect (``-M key=value`` go to `load_model`)."""

        def __init__(
            self,
            model_name: str,
            base_url: str | None = None,
            api_key: str | None = None,
            api_key_vars: list[str] | None = None,
            config: GenerateConfig = GenerateConfig(),
            **model_args: Any,
        ) -> None:
            super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, api_key_vars=api_key_vars or [], config=config)
            from valign.models.registry import load_model
            from valign.serve import Batcher

            self.model = load_model(model_name, **model_args)
            # One batch at a time: an evaluation wants throughput, not fairness, and the
            # requests that wait meanwhile make the next batch bigger.
            self.batcher = Batcher(self.model, max_batches=1)

        async def generate(
            self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice, config: GenerateConfig
        ) -> ModelOutput:
            conv = [_message(m) for m in input]
            defaults = GenConfig()
            gen = GenConfig(
                temperature=defaults.temperature if config.temperature is None else config.temperature,
                top_p=defaults.top_p if config.top_p is None else config.top_p,
                max_new_tokens=config.max_tokens or defaults.max_new_tokens,
                seed=config.seed,
            )
            comp = (await asyncio.wrap_future(self.batcher.submit(conv, gen)))[0]
            output = ModelOutput.from_content(self.model_name, comp.text, stop_reason="max_tokens" if comp.finish_reason == "length" else "stop")
            output.usage = ModelUsage(
                input_tokens=comp.prompt_tokens, output_tokens=comp.completion_tokens, total_tokens=comp.prompt_tokens + comp.completion_tokens
            )
            return output

        def max_connections(self) -> int:
            return 32  # requests wait in the batcher's queue; more of them make bigger batches

        def close(self) -> None:
            self.batcher.stop()

    return ValignModelAPI


def _message(m: Any) -> dict[str, str]:
    # Tool results have no place in a plain chat template; they reach the model as user text.
    role = m.role if m.role in ("system", "user", "assistant") else "user"
    return {"role": role, "content": m.text}

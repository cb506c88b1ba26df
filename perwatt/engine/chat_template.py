"""A checkpoint's chat template, rendered the way ``transformers`` and vLLM render it.

Chat templates are Jinja2 programs shipped with a checkpoint (``tokenizer_config.json``'s
``chat_template``, or the ``chat_template.jinja`` file transformers >= 4.43 writes beside it).
They come from whoever published the model, so they are untrusted code: they run in Jinja2's
``ImmutableSandboxedEnvironment``, which refuses attribute access to Python internals and any
mutation of the objects passed in. The environment is configured exactly as transformers'
``_compile_jinja_template`` (``utils/chat_template_utils.py``) configures it, so a template
renders the same text here as in ``tokenizer.apply_chat_template``:

* ``trim_blocks`` and ``lstrip_blocks`` on, the ``loopcontrols`` extension (``break``,
  ``continue``) and a no-op ``{% generation %}`` block (transformers' assistant-mask tag);
* ``tojson`` that does not HTML-escape (Jinja's default would turn ``<`` into ``\\u003c``);
* globals ``raise_exception(msg)`` (how templates refuse, e.g., a system message) and
  ``strftime_now(fmt)`` (Llama 3.x date headers);
* variables ``messages``, ``add_generation_prompt``, ``tools``, ``documents`` and the
  tokenizer's special tokens by name (``bos_token``, ``eos_token``, ...).

The rendered text is tokenized *without* adding special tokens again (templates write their own
BOS), as transformers' ``apply_chat_template(tokenize=True)`` does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from perwatt.errors import DataFormatError


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: transformers marks assistant text with it
    for training masks; for rendering it is just its body."""

    tags = {"generation"}  # noqa: RUF012  (jinja2's own class attribute)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        node: jinja2.nodes.Node = jinja2.nodes.CallBlock(
            self.call_method("_body"), [], [], body
        ).set_lineno(lineno)
        return node

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """One compiled template; :meth:`render` gives the prompt text."""

    def __init__(self, source: str, special_tokens: Mapping[str, str], *, origin: str) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_GenerationTag, jinja2.ext.loopcontrols],
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.exceptions.TemplateError as e:
            raise DataFormatError(f"{origin}: the chat template does not compile: {e}") from e
        self.source = source
        self.origin = origin
        self.special_tokens = dict(special_tokens)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt text for ``messages``. A template that refuses the conversation (its
        ``raise_exception``, e.g. "roles must alternate") raises :class:`ValueError` with its
        message; the server answers that as a 400."""
        # transformers drops None-valued keys before rendering (_normalize_chat_messages).
        msgs = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return str(
                self._template.render(
                    **self.special_tokens,
                    messages=msgs,
                    add_generation_prompt=add_generation_prompt,
                    tools=tools,
                    documents=None,
                )
            )
        except jinja2.exceptions.TemplateError as e:
            raise ValueError(f"the model's chat template refused the messages: {e}") from e


__all__ = ["ChatTemplate"]

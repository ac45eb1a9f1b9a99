"""Prompt rendering: a question (plus an optional instruction) as the model's input text.

``chat`` uses the tokenizer's own chat template (one user turn, generation prompt added);
``plain`` is the bare text, for base models without a template.
"""

from __future__ import annotations

from data.synthetic import Problem


def question_text(problem: Problem, instruction: str = "") -> str:
    return f"{problem.prompt} {instruction}".strip() if instruction else problem.prompt


def render_prompt(problem: Problem, tokenizer, template: str = "chat",
                  instruction: str = "") -> str:
    text = question_text(problem, instruction)
    if template == "plain":
        return text + "\n"
    if template != "chat":
        raise ValueError(f"prompt template ({template!r}) must be 'chat' or 'plain'; "
                         "set data.prompt_template=chat")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("data.prompt_template=chat but the tokenizer has no chat template; "
                         "set data.prompt_template=plain for a base model")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)

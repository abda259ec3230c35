"""``soundguide app``: a Gradio page over the same engine, configs and plugins.

:mod:`.configs` turns what the page holds into a run config (validated like a
TOML file, with the same one-line errors) and back into TOML; :mod:`.runner`
runs it with :func:`soundguide.api.edit` in a thread and streams its steps;
:mod:`.page` builds the ``gr.Blocks``; :mod:`.cli` is the command. Only
:mod:`.page` and :mod:`.cli` import gradio (the ``app`` extra).
"""

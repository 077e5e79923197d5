"""OpenAI chat completions <-> Anthropic Messages API: pure functions of JSON, no I/O.

``request.to_messages`` (a chat completions request -> a Messages request, or a 400 naming
the field), ``response.to_chat_completion`` (a Messages answer -> a chat completion),
``stream.StreamTranslator`` (Messages SSE events -> chat completion chunks, one event at a
time) and ``errors.to_openai_error`` (an Anthropic error -> the OpenAI error shape and the
status the openai SDKs expect). Foundation layer: only the standard library, third-party
packages and ``proxy.errors``.
"""

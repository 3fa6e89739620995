"""Talk to `tunelab serve` with the official OpenAI client (pip install openai):

    tunelab serve examples/serve/demo.yaml        # in one terminal
    python examples/serve/client.py               # in another
"""

from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")  # the key is checked only with --api-key
print([model.id for model in client.models.list().data])

reply = client.chat.completions.create(
    model="demo", messages=[{"role": "user", "content": "Tell me a story about a cat."}], temperature=0,
    max_tokens=64)
print(reply.choices[0].message.content, reply.choices[0].finish_reason, reply.usage)

for chunk in client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Tell me a story about a dog."}], stream=True,
        max_tokens=64, stream_options={"include_usage": True}):
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()

"""llama.cpp natively (PyPI llama-cpp-python) on the SmolLM2 GGUF: the CPU
reference for `make bench`. Same measurements as `phi-web bench` makes of
phi-web: prefill of 128 and 1024 random tokens, decode at 64 and 2048
tokens of context, with 1 and 2 threads.

    python bench/llama_cpp_bench.py MODEL.gguf OUT.json
"""

import json
import random
import sys
import time

from llama_cpp import Llama, __version__

DECODE_TOKENS = 16


def measure(path, threads):
    llm = Llama(model_path=path, n_ctx=4096, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    rng = random.Random(7)
    vocab = llm.n_vocab()
    ids = lambda n: [rng.randrange(100, vocab) for _ in range(n)]
    llm.eval(ids(16))  # warm-up
    prefill = []
    for n in (128, 1024):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids(n))
        seconds = time.perf_counter() - start
        prefill.append({"prompt_tokens": n, "tokens_per_s": n / seconds, "ttft_ms": seconds * 1e3})
    decode = []
    for context in (64, 2048):
        llm.reset()
        llm.eval(ids(context))
        start = time.perf_counter()
        for _ in range(DECODE_TOKENS):
            llm.eval(ids(1))
        seconds = time.perf_counter() - start
        decode.append({"context_tokens": context, "tokens": DECODE_TOKENS, "tokens_per_s": DECODE_TOKENS / seconds})
    return {"threads": threads, "prefill": prefill, "decode": decode}


def main():
    path, out = sys.argv[1], sys.argv[2]
    report = {"llama_cpp_python": __version__, "model": path, "runs": [measure(path, t) for t in (1, 2)]}
    text = json.dumps(report, indent=2)
    with open(out, "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

"""map_async returns a request id at once; get_results collects the results later.

Run as ``python async_results.py [HOST]``.
"""

import sys
import time

import sheepdog

conf = {"host": sys.argv[1]} if len(sys.argv) > 1 else {"scheduler": "local"}


def slow_square(x):
    import time

    time.sleep(0.5)
    return x * x


request_id = sheepdog.map_async(slow_square, [(n,) for n in range(8)], conf)
print(f"submitted request {request_id}")
while True:
    results = sheepdog.get_results(request_id, "./sheepdog.sqlite", block=False)
    finished = sum(result is not None for _args, result in results)
    print(f"{finished} of {len(results)} finished")
    if finished == len(results):
        break
    time.sleep(1)
print([result for _args, result in results])  # [0, 1, 4, 9, 16, 25, 36, 49]

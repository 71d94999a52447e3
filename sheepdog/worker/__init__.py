"""The code that runs only on the cluster: the worker loop, its runner, client and output.

Every module here is embedded in the job file (see ``caller/jobscript.py``),
so it imports only the standard library, cloudpickle and ``wire``; nothing in
the caller's process imports it.
"""

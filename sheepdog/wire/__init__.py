"""What both sides of the callback agree on: the protocol, the serialisation, the settings.

Every module here is embedded in the job file and also runs in the caller, so
it imports only the standard library and cloudpickle.
"""

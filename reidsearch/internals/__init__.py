"""The only places reidsearch touches private parts of its dependencies.

Some things reidsearch needs have no public API in the library that does them (e.g. Ray's
record of the autoscaler's maximum size). Each such access is one named function in the module
of its dependency, with the reason no public API does it, and ``tests/test_private_apis.py``
checks each one, naming it, so that an upgrade that changes it fails there and not deep in a
search. These modules import nothing of reidsearch, and import the library they wrap only
inside their functions.
"""

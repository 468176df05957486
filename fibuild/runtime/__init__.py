"""Resolution and dispatch at run time: ApplyTable, Resolver, the Kernel ``fibuild.load`` returns.

Named ``runtime`` rather than ``apply`` so the public verb ``fibuild.apply`` is never
shadowed by a subpackage of the same name.
"""

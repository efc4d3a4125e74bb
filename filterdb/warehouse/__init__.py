"""The warehouse: engines, schema, views, migrations, bulk writes and reads, checks, ad-hoc SQL.

The bottom of the data flow: every other stage reads or writes through it, and it imports
none of them.
"""

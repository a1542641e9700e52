"""The prediction log and users' feedback: storage, the write path, and accuracy reports.

    schema.py    the tables (SQLAlchemy Core), shared by the store and the migrations
    store.py     Store: one database (SQLite file by default, PostgreSQL by URL)
    journal.py   Journal: append-only local files that hold records until the database has them
    recorder.py  PredictionLog: buffers records off the request path and never loses them
    report.py    accuracy and latency figures computed from stored rows
"""

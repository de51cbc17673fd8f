"""The results table: finished runs read back from their folders (collect) into typed
points and written as results.csv/json (table); runs that diverged (diverged).
"""

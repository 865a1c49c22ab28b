"""The whole loop's read-outs: the demo summary and the results document, from a workspace's files."""

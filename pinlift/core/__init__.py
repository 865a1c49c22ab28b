"""What every stage shares, written once: vocabulary, clock, table schemas, the config loader, run
directories and the one-line error wrapper. Imports none of pinworld, pinclip, ranking or abtest."""

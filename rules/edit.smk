# Editing: Prompt-to-Prompt edit batches driven by a manifest (filled in by the editing stage).


def edit_targets(subject):
    return []

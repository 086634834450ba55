"""AOSK stream processors (faust); installed as aosk.streams."""

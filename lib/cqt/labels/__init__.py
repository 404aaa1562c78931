"""The label study (`cqt-labels`): choose the label threshold r_t from data."""

"""Getting an image in: where its bytes come from (sources) and how they become a tensor."""

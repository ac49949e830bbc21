"""Analysis of template banks: banks, similarity, clustering, fold plans, loops, counts."""

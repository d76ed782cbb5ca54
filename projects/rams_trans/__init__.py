"""RAMS-Trans: recurrent attention multi-scale transformer for fine-grained recognition (ACM MM 2021)."""

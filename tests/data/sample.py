"""A small module to complete: the README asks for the body of is_prime (line 5, column 5)."""


def is_prime(n: int) -> bool:
    


def fibonacci(n: int) -> list[int]:
    """The first n Fibonacci numbers."""
    result = [0, 1]
    while len(result) < n:
        result.append(result[-1] + result[-2])
    return result[:n]

def main() -> None:
    print("aosk")

"""UserService and AuthService."""

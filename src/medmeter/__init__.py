"""medmeter: on-chain metering and settlement of health-information exchange."""

__version__ = "0.1.0"
